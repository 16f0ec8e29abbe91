"""Who is asking: a ``User`` (a name, admin or not) from the instance's identity source.

Three sources, picked by ``[identity] mode`` in the settings (``workbench.lab.settings``):

- ``local`` (the default): one user named after the OS user (``$KDWB_USER`` overrides it), no
  sign-in. On their own machine the OS user is an admin of their own store, so the app behaves
  as a single-user tool; another name (``--user bob``) is an ordinary user.
- ``oidc``: Streamlit's ``st.login`` / ``st.user`` (OpenID Connect). The page reads the claims
  and calls ``user_from_claims``: the e-mail, else the preferred user name, else the subject.
- ``proxy``: an authenticating reverse proxy (oauth2-proxy, Authelia, ...) puts the user in a
  trusted request header (``[identity] header``); the page calls ``user_from_headers``. Only
  safe behind such a proxy, which must strip the header from the client's own requests.

This module never logs headers or claims: they can carry cookies and tokens.
"""

from __future__ import annotations

import getpass
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.lab.settings import LabSettings

__all__ = [
    "Confusable",
    "IdentityError",
    "User",
    "check_oidc_ready",
    "check_user_name",
    "cli_user",
    "confusable_names",
    "local_user",
    "os_user",
    "skeleton",
    "user_from_claims",
    "user_from_headers",
]

USER_ENV = "KDWB_USER"
NAME_MAX = 200


class IdentityError(WorkbenchError):
    """No acceptable user could be read (a missing header, an empty claim, a bad name)."""


@dataclass(frozen=True)
class User:
    """A person using the instance. ``admin``: may act on every run and see private ones."""

    name: str
    admin: bool = False

    def __str__(self) -> str:
        return self.name + (" (admin)" if self.admin else "")


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container) and no LOGNAME/USER
        return f"uid{os.getuid()}"


def check_user_name(name: Any, where: str = "the user name") -> str:
    """``name`` stripped; an ``IdentityError`` when it is empty, too long or has control
    characters (it goes into records, listings and the sidebar)."""
    if not isinstance(name, str) or not name.strip():
        raise IdentityError(f"{where} is empty; a user needs a name")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise IdentityError(
            f"{where} must be printable text of at most {NAME_MAX} characters, got "
            f"{len(name)} characters"
        )
    for i, ch in enumerate(name, start=1):
        if not ch.isprintable():
            raise IdentityError(
                f"{where} has {_unseen(ch)} at character {i}; a user name is printable text "
                "on one line: retype it without that character"
            )
    return name


_CONTROL_NAMES = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return", "\x00": "a NUL"}


def _unseen(ch: str) -> str:
    """A character that cannot be seen, named: "a tab", "the invisible character U+200B
    (ZERO WIDTH SPACE)"."""
    if ch in _CONTROL_NAMES:
        return _CONTROL_NAMES[ch]
    if unicodedata.category(ch) == "Cc":
        return f"the control character U+{ord(ch):04X}"
    return f"the invisible character U+{ord(ch):04X} ({unicodedata.name(ch, '?')})"


def _user(name: str, settings: LabSettings) -> User:
    admin = name in settings.admins or (settings.local and name == os_user())
    return User(name, admin=admin)


def local_user(settings: LabSettings) -> User:
    """The user of ``local`` mode: ``$KDWB_USER``, else the OS user."""
    return _user(check_user_name(os.environ.get(USER_ENV) or os_user(), f"${USER_ENV}"), settings)


def cli_user(name: str | None, settings: LabSettings) -> User:
    """The user a command acts as: ``--user``, else ``$KDWB_USER``, else the OS user."""
    if name is None:
        return local_user(settings)
    return _user(check_user_name(name, "--user"), settings)


def user_from_headers(headers: Mapping[str, str | Sequence[str]], settings: LabSettings) -> User:
    """``proxy`` mode: the user named by the trusted header (looked up case-insensitively).

    ``headers`` maps each name to its value, or to every value it came with (the page passes
    ``st.context.headers.get_all``): a request that names more than one user (two such headers,
    or one a proxy appended to, ``"admin, alice"``) is refused, never resolved to either. The
    value is read as UTF-8 (the server hands over its bytes as Latin-1) and NFC-normalised."""
    wanted = settings.user_header.lower()
    values: list[str] = []
    for key, value in headers.items():
        if key.lower() == wanted:
            values += [value] if isinstance(value, str) else [str(v) for v in value]
    values = [v for v in values if v.strip()]
    if not values:
        raise IdentityError(
            f"no {settings.user_header} header on this request: this instance is in proxy "
            "mode and must be reached through its authenticating proxy"
        )
    if len(values) > 1 or "," in values[0]:
        raise IdentityError(
            f"this request names more than one user in {settings.user_header}: the proxy must "
            "replace the header a client sends, not add to it"
        )
    name = _utf8(values[0], settings.user_header)
    return _user(check_user_name(name, f"the {settings.user_header} header"), settings)


def _utf8(value: str, header: str) -> str:
    """A header value as the proxy wrote it: HTTP servers decode header bytes as Latin-1, so a
    UTF-8 name (``\u0430dmin``) arrives as ``\xd0\xb0dmin``; NFC so that one name has one form."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # already text beyond Latin-1: decoded by whoever passed it
        return unicodedata.normalize("NFC", value)
    try:
        return unicodedata.normalize("NFC", raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise IdentityError(f"the {header} header is not UTF-8 text; fix the proxy") from None


def user_from_claims(claims: Mapping[str, Any], settings: LabSettings) -> User:
    """``oidc`` mode: the signed-in user's e-mail, else preferred user name, else subject."""
    for claim in ("email", "preferred_username", "sub"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return _user(check_user_name(value, f"the {claim} claim"), settings)
    raise IdentityError(
        "the identity provider sent no email, preferred_username or sub claim; add the "
        "'email' scope to [auth] client_kwargs in .streamlit/secrets.toml"
    )


def check_oidc_ready(secrets: Mapping[str, Any]) -> None:
    """``oidc`` mode needs Streamlit's ``[auth]`` secrets (``redirect_uri``, ``cookie_secret``,
    and a provider's ``client_id``, ``client_secret``, ``server_metadata_url``, flat or in
    ``[auth.NAME]``) and the Authlib package; an ``IdentityError`` says which is missing."""
    auth = secrets.get("auth") if isinstance(secrets, Mapping) else None
    how = "see 'Host it for your lab' in the README"
    if not isinstance(auth, Mapping):
        raise IdentityError(
            "identity mode oidc needs an [auth] section in .streamlit/secrets.toml; " + how
        )
    missing = [key for key in ("redirect_uri", "cookie_secret") if not auth.get(key)]
    providers = [auth, *(v for v in auth.values() if isinstance(v, Mapping))]
    provider_keys = ("client_id", "client_secret", "server_metadata_url")
    if not any(all(p.get(k) for k in provider_keys) for p in providers):
        missing.append("client_id, client_secret and server_metadata_url")
    if missing:
        raise IdentityError(f"[auth] in .streamlit/secrets.toml lacks {', '.join(missing)}; {how}")
    try:
        import authlib  # noqa: F401  (Streamlit's st.login needs it)
    except ImportError:
        raise IdentityError(
            "identity mode oidc needs the Authlib package: pip install -e '.[oidc]'"
        ) from None


# ---------------------------------------------------------------------------------- look-alikes
# Cyrillic and Greek letters that look like Latin ones in common fonts (after case folding): a
# small, hand-picked part of Unicode's confusables.txt (UTS #39, "Unicode Security Mechanisms",
# section 4), enough for names such as "\u0430dmin" (Cyrillic a) passing for "admin".
_LOOKALIKES = str.maketrans(
    {
        # Cyrillic
        "\u0430": "a", "\u0432": "b", "\u0435": "e", "\u0451": "e", "\u0456": "i",
        "\u0457": "i", "\u0458": "j", "\u043a": "k", "\u043c": "m", "\u043d": "h",
        "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0442": "t", "\u0443": "y",
        "\u0445": "x", "\u0455": "s", "\u04bb": "h", "\u0501": "d", "\u051b": "q",
        "\u051d": "w", "\u04cf": "l", "\u0491": "r",
        # Greek
        "\u03b1": "a", "\u03b2": "b", "\u03b5": "e", "\u03b7": "n", "\u03b9": "i",
        "\u03ba": "k", "\u03bd": "v", "\u03bf": "o", "\u03c1": "p", "\u03c4": "t",
        "\u03c5": "u", "\u03c7": "x", "\u03c9": "w", "\u03b6": "z",
        # Latin letters that pass for others
        "\u0131": "i", "\u0251": "a", "\u0261": "g",
    }
)  # fmt: skip


def skeleton(name: str) -> str:
    """What ``name`` looks like: NFKC (full-width and other compatibility forms folded), case
    folded, and Cyrillic or Greek look-alikes mapped to the Latin letters they pass for. Two
    names with one skeleton are easy to mistake for each other."""
    return unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKES)


@dataclass(frozen=True)
class Confusable:
    """A user name that looks like another (``like``), or that mixes scripts (``like`` None)."""

    name: str
    like: str | None
    letters: tuple[str, ...]  # e.g. ("Cyrillic \u0430",): what makes it look like another

    def message(self) -> str:
        """Plain text (a page escapes it): ``"\u0430dmin" (Cyrillic \u0430) looks like "admin"``."""
        why = f" ({', '.join(self.letters)})" if self.letters else ""
        if self.like is None:
            return f'"{self.name}"{why} mixes the letters of several scripts'
        return f'"{self.name}"{why} looks like "{self.like}"'


def _script(char: str) -> str | None:
    """The script of a letter (``Latin``, ``Cyrillic``, ...) by the Unicode name of its NFKC
    form (a full-width ``b`` is Latin), else None."""
    folded = unicodedata.normalize("NFKC", char)
    if len(folded) != 1 or not folded.isalpha():
        return None
    return unicodedata.name(folded, "").split(" ")[0].capitalize() or None


def _look_alike_letters(name: str) -> tuple[str, ...]:
    """What in ``name`` is not plain Latin: ``("Cyrillic \u0430",)``, ``("full-width \uff42",)``."""
    letters: dict[str, None] = {}
    for c in name:
        if unicodedata.normalize("NFKC", c) != c:
            kind = unicodedata.name(c, "").split(" ")[0]
            letters[f"{'full-width' if kind == 'FULLWIDTH' else 'compatibility form'} {c}"] = None
        elif _script(c) not in (None, "Latin"):
            letters[f"{_script(c)} {c}"] = None
    return tuple(letters)


def confusable_names(names: Iterable[str]) -> list[Confusable]:
    """The names among ``names`` that are easy to mistake for another of them (one skeleton,
    different text), and those that mix Latin with another script (``"p\u0430ul"``), each once,
    in the order given. For the admins: a look-alike owner can pass for a colleague."""
    names = list(dict.fromkeys(n for n in names if isinstance(n, str) and n))
    by_skeleton: dict[str, list[str]] = {}
    for name in names:
        by_skeleton.setdefault(skeleton(name), []).append(name)
    found = []
    for name in names:
        twins = [other for other in by_skeleton[skeleton(name)] if other != name]
        letters = _look_alike_letters(name)
        scripts = {_script(c) for c in name} - {None}
        if twins:
            # the plain ASCII name (or, among ASCII names, the first given) is the one imitated
            like = next((t for t in twins if t.isascii()), twins[0])
            if name.isascii() and (not like.isascii() or names.index(like) > names.index(name)):
                continue  # the original: its look-alike is reported instead
            found.append(Confusable(name, like, letters))
        elif len(scripts) > 1:
            found.append(Confusable(name, None, letters))
    return found
