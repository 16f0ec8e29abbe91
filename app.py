"""KD Workbench: the Streamlit app. Pages live in pages/; the logic lives in workbench/."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._shared import (
    APP_STARTED,
    DEEP_LINK,
    USER,
    current_user,
    hide_navigation,
    identity_sidebar,
    init_session,
    show_error,
)

# A local favicon: a Material or emoji icon is fetched from a CDN, which fails offline.
FAVICON = str(Path(__file__).parent / "assets" / "favicon.png")
st.set_page_config(page_title="KD Workbench", page_icon=FAVICON, layout="wide")
try:  # a wrong workbench.toml, or no user header in proxy mode: say why, run nothing
    st.session_state[USER] = current_user()
except Exception as exc:
    hide_navigation()
    show_error(exc)
    st.stop()
init_session()

page = st.navigation(
    [
        st.Page("pages/models.py", title="Models", icon=":material/account_tree:", default=True),
        st.Page("pages/distill.py", title="Distill", icon=":material/tune:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/ablations.py", title="Ablations", icon=":material/science:"),
        st.Page("pages/search.py", title="Search", icon=":material/travel_explore:"),
    ]
)
st.set_page_config(page_title="KD Workbench")  # st.navigation sets the page's own title
identity_sidebar(st.session_state[USER])
st.session_state[APP_STARTED] = True
if deep_link := st.session_state.pop(DEEP_LINK, None):
    target, params = deep_link  # a deep link that first ran alone (see require_app)
    st.switch_page(target, query_params=params)
try:
    page.run()
except Exception as exc:  # the last net: a bug on a page shows a short error, no traceback
    show_error(exc)
