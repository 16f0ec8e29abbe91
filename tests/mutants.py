"""`make mutants`: apply a named list of plausible bugs, one at a time, to a copy of the tree and
check that a fast test catches each. Not part of `make test` (a few minutes on a 2-core CPU).

Each mutation replaces one exact snippet of one file (it must occur exactly once: a stale
entry is reported, not skipped) and names the tests that should fail. The report lists every
mutant as caught or SURVIVED; the exit code is non-zero if any survived or is stale.

    python tests/mutants.py            # all
    python tests/mutants.py -k seed    # those whose name contains "seed"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root


STEPS = "tests/test_engine_steps.py"
JOBS = "tests/test_jobs.py"
SHARING = "tests/test_sharing.py"
METHODS = "tests/test_methods.py"

MUTANTS = [
    # --- from issue 13's review (the engine) ---
    Mutant(
        "adapters left out of the optimizer",
        "workbench/training/setup.py",
        '{"params": [*model.parameters(), *_loss_parameters(hybrid, weighting=False)]},',
        '{"params": [*model.parameters()]},',
        (STEPS + "::test_optimizer_trains_the_adapters_and_the_learned_weights_without_decay",),
    ),
    Mutant(
        "weight decay on the learned log-variances",
        "workbench/training/setup.py",
        "if (id(p) in scheme) == weighting]",
        "if (id(p) in scheme) != weighting]",
        (STEPS + "::test_optimizer_trains_the_adapters_and_the_learned_weights_without_decay",),
    ),
    Mutant(
        "data order seeded with 0",
        "workbench/training/setup.py",
        "torch.Generator().manual_seed(config.seed),",
        "torch.Generator().manual_seed(0),",
        (STEPS + "::test_seeds_change_the_initialisation_and_the_data_order",),
    ),
    Mutant(
        "initialisation seeded with 0",
        "workbench/training/setup.py",
        "with seeded_construction(config.seed):",
        "with seeded_construction(0):",
        (STEPS + "::test_seeds_change_the_initialisation_and_the_data_order",),
    ),
    Mutant(
        "weighting never sees the validation accuracy",
        "workbench/training/steps.py",
        "    t.hybrid.epoch_end(val_acc)\n",
        "",
        (STEPS + "::test_end_epoch_reports_validation_to_the_weighting_scheme",),
    ),
    Mutant(
        "epoch train loss over the whole history",
        "workbench/training/steps.py",
        'logged = [r["total"] for r in t.history if r["epoch"] == epoch]',
        'logged = [r["total"] for r in t.history]',
        (STEPS + "::test_epoch_train_loss_is_the_mean_of_that_epochs_logged_steps",),
    ),
    Mutant(
        "evaluate leaves the model in eval mode",
        "workbench/training/steps.py",
        "    model.train(was_training)\n",
        "",
        (STEPS + "::test_evaluate_uses_eval_mode_and_restores_training_mode",),
    ),
    Mutant(
        "evaluate in training mode",
        "workbench/training/steps.py",
        "    model.eval()\n    preds",
        "    preds",
        (STEPS + "::test_evaluate_uses_eval_mode_and_restores_training_mode",),
    ),
    Mutant(
        "augmentation raises",
        "workbench/training/steps.py",
        "    b, c, h, w = x.shape  # [B, C, H, W]\n    pad",
        "    raise RuntimeError('augment')\n    b, c, h, w = x.shape\n    pad",
        (STEPS + "::test_augmentation_runs_in_the_engine",),
    ),
    Mutant(
        "one shift for the whole batch",
        "workbench/training/steps.py",
        "shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)",
        "shifts = torch.randint(0, 2 * pad + 1, (2, 1), generator=generator).expand(2, b)",
        (STEPS + "::test_augment_shifts_each_image_by_its_own_offset",),
    ),
    Mutant(
        "headline accuracy on the validation split",
        "workbench/training/steps.py",
        "logits = logits_of(t.model, t.test_x)  # [N_test, K], CPU",
        "logits = logits_of(t.model, t.val_x)  # [N_test, K], CPU",
        (STEPS + "::test_headline_metrics_are_measured_on_the_test_split",),
    ),
    # --- the ablation statistics ---
    Mutant(
        "seeds paired by position",
        "workbench/ablation/statistics.py",
        "d = np.array([full[s] - reduced[s] for s in shared])",
        "d = np.array(list(full.values())[: len(shared)]) - np.array("
        "list(reduced.values())[: len(shared)])",
        ("tests/test_ablation.py",),
    ),
    Mutant(
        "Holm without the step-down maximum",
        "workbench/ablation/statistics.py",
        "running = max(running, min(1.0, (m - rank) * p))",
        "running = min(1.0, (m - rank) * p)",
        ("tests/test_ablation.py",),
    ),
    Mutant(
        "response loss without T^2",
        "workbench/distill/response.py",
        'reduction="batchmean", log_target=True) * (t * t)',
        'reduction="batchmean", log_target=True)',
        ("tests/test_losses.py",),
    ),
    # --- new code: checkpoints and resume ---
    Mutant(
        "resume without the optimizer state",
        "workbench/training/steps.py",
        '    t.optimizer.load_state_dict(state["optimizer"])\n',
        "",
        (STEPS + "::test_a_resumed_run_equals_an_uninterrupted_one",),
    ),
    Mutant(
        "resume without the data-order generator",
        "workbench/training/steps.py",
        '    t.generator.set_state(state["generator"])\n',
        "",
        (STEPS + "::test_a_resumed_run_equals_an_uninterrupted_one",),
    ),
    Mutant(
        "resume without the schedule",
        "workbench/training/steps.py",
        '    t.scheduler.load_state_dict(state["scheduler"])\n',
        "",
        (STEPS + "::test_a_resumed_run_equals_an_uninterrupted_one",),
    ),
    Mutant(
        "validation scheme state not checkpointed",
        "workbench/distill/weighting.py",
        '        self.keep, self.direction = float(state["keep"]), int(state["direction"])\n',
        "        pass\n",
        (STEPS + "::test_every_weighting_scheme_keeps_its_state_in_the_checkpoint",),
    ),
    # --- new code: one RNG per run ---
    Mutant(
        "construction without restoring the global generator",
        "workbench/training/rng.py",
        "with _CONSTRUCTION, torch.random.fork_rng(devices=[]):",
        "with _CONSTRUCTION:",
        (STEPS + "::test_construction_leaves_the_global_generator_alone",),
    ),
    Mutant(
        "dropout from the global generator",
        "workbench/training/rng.py",
        "mask = torch.rand(x.shape, generator=self.generator, device=x.device) < keep",
        "mask = torch.rand(x.shape, device=x.device) < keep",
        (STEPS + "::test_dropout_draws_from_the_run_generator",),
    ),
    # --- issue 12: what runs of one process share (workbench.training.teacher_pool) ---
    Mutant(
        "a warm teacher kept across a replaced checkpoint",
        "workbench/training/teachers.py",
        "teacher_id, stat.st_size, stat.st_mtime_ns, str(device))",
        "teacher_id, stat.st_size, 0, str(device))",
        ("tests/test_warm.py::test_another_teacher_or_checkpoint_is_not_served_from_the_warm_one",),
    ),
    Mutant(
        "a teacher changed by its run lent again",
        "workbench/training/teacher_pool.py",
        "    if _state(model) != lent:\n        return\n",
        "",
        ("tests/test_warm.py::test_a_teacher_changed_by_its_run_is_not_lent_again",),
    ),
    # --- new code: the queue ---
    Mutant(
        "a claim that does not check the status",
        "workbench/runs/queue.py",
        '        if record["status"] not in statuses:\n            return False',
        "        if False:\n            return False",
        (JOBS + "::test_each_run_is_claimed_once_by_competing_executors",),
    ),
    Mutant(
        "a silent holder taken for alive",
        "workbench/runs/queue.py",
        "    if age is not None and age > silent_after():\n        return False\n",
        "",
        (JOBS + "::test_a_silent_holder_is_taken_for_dead_and_a_live_one_is_not",),
    ),
    Mutant(
        "auto-resume without a limit",
        "workbench/runs/queue.py",
        'again = auto_resume and (record.get("auto_resumes") or 0) < 1',
        "again = auto_resume",
        (JOBS + "::test_a_run_left_by_a_dead_process_is_resumed_once",),
    ),
    Mutant(
        "a queued run cannot be cancelled",
        "workbench/runs/queue.py",
        'done = store.update_run_if(run_id, lambda r: r["status"] == "queued", status="cancelled")',
        "done = None",
        (JOBS + "::test_cancel_queued_and_running",),
    ),
    Mutant(
        "the app executes although a worker is alive",
        "workbench/runs/job_manager.py",
        "            return not runqueue.live_workers(self.store)",
        "            return True",
        (JOBS + "::test_the_app_leaves_execution_to_live_workers",),
    ),
    Mutant(
        "the fair queue serves first come, first served",
        "workbench/runs/queue.py",
        'ready, key=lambda o: (busy.get(o, 0), served.get(o, 0.0), mine[o][0]["created_at"])',
        'ready, key=lambda o: mine[o][0]["created_at"]',
        (SHARING + "::test_a_queues_ten_b_queues_one_and_b_starts_second",),
    ),
    Mutant(
        "the running limit is checked only before the claim",
        "workbench/runs/queue.py",
        'return max_running is None or _owner_running(store, record.get("owner") or "") < max_running',
        "return True",
        (SHARING + "::test_the_running_limit_holds_against_a_claim_that_raced_past_the_order",),
    ),
    Mutant(
        "another user may cancel",
        "workbench/lab/access.py",
        "return user.admin or (bool(owner_of(record)) and owner_of(record) == user.name)",
        "return True",
        (SHARING + "::test_another_user_is_refused_every_mutating_action",),
    ),
    Mutant(
        "a private run is visible to everyone",
        "workbench/lab/access.py",
        'return not record.get("private") or user.admin or owner_of(record) == user.name',
        "return True",
        (SHARING + "::test_private_runs_are_hidden_from_others_and_look_deleted",),
    ),
    Mutant(
        "a status change misses the index of active runs",
        "workbench/storage/store.py",
        """            self._db.set(key, record)
            if "status" in fields:
                active_runs.index_status(self._db, run_id, record["status"])
        if fields.get("status") in FINISHED or MANIFEST_FIELDS & fields.keys():""",
        """            self._db.set(key, record)
        if fields.get("status") in FINISHED or MANIFEST_FIELDS & fields.keys():""",
        ("tests/test_store.py::test_the_active_index_follows_every_status_change",),
    ),
    # --- from issue 17 (the one submit gate) ---
    Mutant(
        "the gate builds the models twice",
        "workbench/runs/submit.py",
        "    pair = inspect_pair(\n",
        "    inspect_pair(config.teacher, config.student, config.dataset, config.data_path)\n"
        "    pair = inspect_pair(\n",
        ("tests/test_submit_gate.py",),
    ),
    Mutant(
        "the gate leaves the teacher run to the run",
        "workbench/runs/submit.py",
        "        check_teacher_run(config, store, user)\n",
        "        pass\n",
        (
            "tests/test_submit_gate.py::test_the_cli_and_the_distill_page_refuse_an_invalid_teacher_run_alike",
        ),
    ),
    # --- from issue 18 (the shared instance, second pass) ---
    Mutant(
        "another user's private teacher used silently",
        "workbench/training/teachers.py",
        'return not record.get("private") or (record.get("owner") or "") == owner',
        "return True",
        (SHARING + "::test_another_users_private_teacher_is_never_used_silently",),
    ),
    Mutant(
        "the first of two user headers wins",
        "workbench/lab/identity.py",
        'if len(values) > 1 or "," in values[0]:',
        "if False:",
        (SHARING + "::test_a_request_naming_two_users_is_refused_whichever_comes_first",),
    ),
    Mutant(
        "privacy, names and tags left out of the manifest",
        "workbench/storage/store.py",
        'if fields.get("status") in FINISHED or MANIFEST_FIELDS & fields.keys():',
        'if fields.get("status") in FINISHED:',
        (
            "tests/test_faults_store.py"
            "::test_repair_gives_back_privacy_names_tags_and_probes_as_they_were",
        ),
    ),
    Mutant(
        "an upload's unpacked size not checked",
        "workbench/training/teachers.py",
        '(unpacked, "unpacks to")',
        '(0, "unpacks to")',
        ("tests/test_hardening.py::test_a_decompression_bomb_is_refused_before_it_is_loaded",),
    ),
    # --- issue 18: fencing, one clock, an interrupted repair ---
    Mutant(
        "a stale holder's writes are not fenced",
        "workbench/storage/fencing.py",
        '    if record.get("claims") != token:',
        "    if False:",
        (
            "tests/test_fencing.py::test_a_stale_holder_writes_nothing_after_the_run_is_claimed_again",
        ),
    ),
    Mutant(
        "heartbeats aged by the observer's wall clock",
        "workbench/storage/liveness.py",
        "        return max(0.0, time.monotonic() - float(mono))",
        "        return max(0.0, time.time() - float(beat))",
        ("tests/test_fencing.py::test_a_heartbeat_of_this_machine_is_aged_on_its_monotonic_clock",),
    ),
    Mutant(
        "an interrupted repair left unmarked",
        "workbench/storage/repair.py",
        "    _write_marker(marker, moved)",
        "    pass",
        (
            "tests/test_repair_faults.py::test_a_repair_killed_half_way_is_detected_and_finished_by_the_next",
        ),
    ),
    # --- issue 20: the new distillation methods ---
    Mutant(
        "dkd beta default 1 instead of 8",
        "workbench/distill/response.py",
        "DKD_BETA = 8.0",
        "DKD_BETA = 1.0",
        (METHODS + "::test_dkd_matches_the_papers_formula_with_its_defaults",),
    ),
    Mutant(
        "dkd target mask from the teacher's argmax",
        "workbench/distill/response.py",
        "y = labels.long().view(b, 1)  # [B, 1], the target class",
        "y = teacher_logits.argmax(dim=1).view(b, 1)",
        (METHODS + "::test_dkd_matches_the_papers_formula_with_its_defaults",),
    ),
    Mutant(
        "dkd target mask rolled by one class",
        "workbench/distill/response.py",
        "y = labels.long().view(b, 1)  # [B, 1], the target class",
        "y = (labels.long().view(b, 1) + 1) % k",
        (METHODS + "::test_dkd_terms_match_numpy_and_dkd_needs_labels",),
    ),
    Mutant(
        "dkd without T^2",
        "workbench/distill/response.py",
        "return (alpha * tckd + beta * nckd).mean() * (t * t)",
        "return (alpha * tckd + beta * nckd).mean()",
        (METHODS + "::test_dkd_matches_the_papers_formula_with_its_defaults",),
    ),
    Mutant(
        "dkd warm-up counted from epoch 0",
        "workbench/distill/hybrid.py",
        "return ((done + 1.0) / self.warmup_epochs).clamp(max=1.0)",
        "return (done / self.warmup_epochs).clamp(max=1.0)",
        (METHODS + "::test_dkd_warmup_ramps_the_response_term_linearly_over_the_epochs",),
    ),
    Mutant(
        "dkd warm-up counter left out of the state dict",
        "workbench/distill/hybrid.py",
        'self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))',
        'self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long), persistent=False)',
        (METHODS + "::test_state_dict_round_trip_keeps_the_warmup_counter_and_the_vid_variances",),
    ),
    Mutant(
        "dist without tau^2",
        "workbench/distill/response.py",
        "return (beta * inter + gamma * intra) * (tau * tau)",
        "return beta * inter + gamma * intra",
        (METHODS + "::test_dist_matches_the_papers_formula",),
    ),
    Mutant(
        "dist intra-class relation over the samples again",
        "workbench/distill/response.py",
        "intra = 1.0 - pearson_rows(p_s.T, p_t.T).mean()",
        "intra = 1.0 - pearson_rows(p_s, p_t).mean()",
        (METHODS + "::test_dist_matches_the_papers_formula",),
    ),
    Mutant(
        "pkt KL direction swapped",
        "workbench/distill/relation.py",
        "return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()",
        "return (p_s * torch.log((p_s + eps) / (p_t + eps))).mean()",
        (METHODS + "::test_pkt_matches_the_kl_of_the_conditional_probabilities",),
    ),
    Mutant(
        "nst kernel degree 1",
        "workbench/distill/feature.py",
        "teacher_maps: Tensor, degree: int = 2,",
        "teacher_maps: Tensor, degree: int = 1,",
        (METHODS + "::test_nst_matches_the_polynomial_kernel_mmd",),
    ),
    Mutant(
        "vid initial variance 1",
        "workbench/distill/feature.py",
        "VID_INITIAL_VARIANCE = 5.0",
        "VID_INITIAL_VARIANCE = 1.0",
        (METHODS + "::test_vid_variance_starts_at_five_and_the_nll_matches_the_gaussian",),
    ),
    Mutant(
        "vid variance as exp instead of softplus",
        "workbench/distill/feature.py",
        "return F.softplus(self.alpha) + self.eps  # [C]",
        "return self.alpha.exp() + self.eps  # [C]",
        (METHODS + "::test_vid_variance_starts_at_five_and_the_nll_matches_the_gaussian",),
    ),
    Mutant(
        "vid variances built but not passed to the loss",
        "workbench/distill/hybrid.py",
        'wired = [{"variance": v()} for v in self.vid_variances]',
        "wired = [{} for v in self.vid_variances]",
        (METHODS + "::test_vid_variances_are_parameters_and_the_term_is_the_sum_of_the_nlls",),
    ),
    Mutant(
        "cc Taylor terms without 1/p!",
        "workbench/distill/relation.py",
        "c = c + (2.0 * gamma) ** p / math.factorial(p) * g.pow(p)",
        "c = c + (2.0 * gamma) ** p * g.pow(p)",
        (METHODS + "::test_cc_matches_the_taylor_expanded_rbf_correlation",),
    ),
    # --- issue 20 item 3: CRD (workbench/distill/contrastive.py) ---
    Mutant(
        "crd memory momentum 0.9",
        "workbench/distill/contrastive.py",
        "CRD_MOMENTUM = 0.5",
        "CRD_MOMENTUM = 0.9",
        ("tests/test_crd.py::test_the_module_is_the_papers_loss_and_updates_its_memory",),
    ),
    Mutant(
        "crd memory update without renormalising",
        "workbench/distill/contrastive.py",
        "return rows / rows.norm(dim=1, keepdim=True)",
        "return rows",
        ("tests/test_crd.py::test_momentum_update_follows_the_rule_by_hand",),
    ),
    Mutant(
        "crd temperature 0.7",
        "workbench/distill/contrastive.py",
        "CRD_TEMPERATURE = 0.07",
        "CRD_TEMPERATURE = 0.7",
        ("tests/test_crd.py::test_the_module_is_the_papers_loss_and_updates_its_memory",),
    ),
    Mutant(
        "crd K not capped to N - 1",
        "workbench/distill/contrastive.py",
        "self.nce_k = min(int(nce_k), n - 1)",
        "self.nce_k = int(nce_k)",
        ("tests/test_crd.py::test_k_is_capped_and_the_positive_is_never_a_negative",),
    ),
    Mutant(
        "crd Z recomputed every batch",
        "workbench/distill/contrastive.py",
        "        self.z_student.copy_(torch.where(self.z_student < 0, z_s, self.z_student))\n"
        "        self.z_teacher.copy_(torch.where(self.z_teacher < 0, z_t, self.z_teacher))\n"
        "        self._z_checked = True\n",
        "        self.z_student.copy_(z_s)\n        self.z_teacher.copy_(z_t)\n",
        ("tests/test_crd.py::test_the_module_is_the_papers_loss_and_updates_its_memory",),
    ),
    Mutant(
        "crd positive among its negatives",
        "workbench/distill/contrastive.py",
        "return others + (others >= idx[:, None]).long()",
        "return others",
        ("tests/test_crd.py::test_negatives_are_distinct_others_uniformly",),
    ),
    Mutant(
        "crd noise weight 1/N instead of K/N",
        "workbench/distill/contrastive.py",
        "noise = k / float(num_samples)",
        "noise = 1 / float(num_samples)",
        ("tests/test_crd.py::test_nce_matches_the_papers_formula_in_a_loop",),
    ),
    Mutant(
        "crd directions crossed (student anchor on its own memory)",
        "workbench/distill/contrastive.py",
        "s_probs = crd_scores(student_embed, teacher_rows, temperature)",
        "s_probs = crd_scores(student_embed, student_rows, temperature)",
        ("tests/test_crd.py::test_nce_matches_the_papers_formula_in_a_loop",),
    ),
    Mutant(
        "crd student memory never written",
        "workbench/distill/contrastive.py",
        "self.memory_student.index_copy_(0, idx, new_s)",
        "pass",
        ("tests/test_crd.py::test_the_module_is_the_papers_loss_and_updates_its_memory",),
    ),
    Mutant(
        "crd negatives' generator state not checkpointed",
        "workbench/distill/contrastive.py",
        '"state": None if g is None else g.get_state(),',
        '"state": None,',
        ("tests/test_crd.py::test_state_dict_holds_memory_z_and_the_negatives_generator",),
    ),
    # --- issue 20 item 2: ReviewKD and OFD (review-ofd) ---
    Mutant(
        "review-ofd: hcl level weights not halved",
        "workbench/distill/review.py",
        "        weight /= 2.0\n",
        "        weight /= 1.0\n",
        ("tests/test_review_ofd.py::test_hcl_matches_a_loop_over_the_pyramid",),
    ),
    Mutant(
        "review-ofd: abf attention maps swapped",
        "workbench/distill/review.py",
        "x = x * a[:, 0].view(b, 1, h, w) + y * a[:, 1].view(b, 1, h, w)",
        "x = x * a[:, 1].view(b, 1, h, w) + y * a[:, 0].view(b, 1, h, w)",
        ("tests/test_review_ofd.py::test_abf_fusion_matches_a_hand_computation",),
    ),
    Mutant(
        "review-ofd: ofd mask keeps s <= t <= 0",
        "workbench/distill/overhaul.py",
        "kept = (s > t) | (t > 0)",
        "kept = (s > t) | (t <= 0)",
        ("tests/test_review_ofd.py::test_ofd_partial_l2_leaves_out_exactly_s_below_t_below_zero",),
    ),
    Mutant(
        "review-ofd: ofd target without the margin",
        "workbench/distill/overhaul.py",
        "t = torch.maximum(t, full_precision(margin).view(1, -1, 1, 1))",
        "t = t + 0 * full_precision(margin).view(1, -1, 1, 1)",
        ("tests/test_review_ofd.py::test_ofd_partial_l2_leaves_out_exactly_s_below_t_below_zero",),
    ),
    Mutant(
        "review-ofd: ofd margin sign flipped",
        "workbench/distill/overhaul.py",
        "margin = mu - sigma * density / mass.clamp_min(1e-300)",
        "margin = mu + sigma * density / mass.clamp_min(1e-300)",
        ("tests/test_review_ofd.py::test_ofd_margin_is_the_mean_of_the_negative_part",),
    ),
    Mutant(
        "review-ofd: ofd pairs not weighted by depth",
        "workbench/distill/overhaul.py",
        "ofd_partial_l2(connector(s), t, margin) / 2 ** (n - 1 - i)",
        "ofd_partial_l2(connector(s), t, margin)",
        (
            "tests/test_review_ofd.py::test_ofd_term_weights_the_pairs_by_depth_and_reads_the_teachers_bns",
        ),
    ),
    Mutant(
        "review-ofd: residual block's bn from the shortcut",
        "workbench/distill/overhaul.py",
        "norms = [m for m in block.children() if isinstance(m, nn.BatchNorm2d)]",
        "norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]",
        ("tests/test_review_ofd.py::test_pre_activation_bn_is_the_last_bn_of_the_residual_branch",),
    ),
    Mutant(
        "review-ofd: pre-activation taps suggested",
        "workbench/distill/taps.py",
        "    student_layers = [li for li in student_layers if not li.preact]\n",
        "",
        ("tests/test_review_ofd.py::test_pre_activation_taps_are_listed_but_never_suggested",),
    ),
    Mutant(
        "review-ofd: ofd accepts a post-activation teacher layer",
        "workbench/distill/taps.py",
        'if feature_kind == "ofd" and side == "teacher" and not layers[path].preact:',
        "if False:",
        (
            "tests/test_review_ofd.py::test_ofd_and_reviewkd_train_from_the_cli_with_their_terms_non_zero",
        ),
    ),
]


def _copy_tree(dest: Path) -> None:
    for name in ("workbench", "tests", "pages"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts")
        )
    for name in ("pyproject.toml", "app.py"):
        shutil.copy2(ROOT / name, dest / name)


def _apply(tree: Path, mutant: Mutant) -> str | None:
    """Mutate ``tree`` in place; the reason when the snippet is not there exactly once."""
    path = tree / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        return f"stale: the snippet occurs {count} times in {mutant.path}"
    path.write_text(text.replace(mutant.old, mutant.new))
    return None


def _run_tests(tree: Path, tests: tuple[str, ...]) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree), KDWB_HOME=str(tree / "home"))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.k in m.name]
    started = time.monotonic()
    survived, stale = [], []
    with tempfile.TemporaryDirectory(prefix="kdwb-mutants-") as tmp:
        pristine = Path(tmp) / "pristine"
        _copy_tree(pristine)
        for i, mutant in enumerate(chosen, 1):
            tree = Path(tmp) / f"m{i}"
            shutil.copytree(pristine, tree)
            problem = _apply(tree, mutant)
            if problem:
                stale.append(mutant.name)
                verdict = problem
            else:
                code = _run_tests(tree, mutant.tests)
                # 1: tests failed (caught); 0: all passed (survived); else an error (caught only
                # if a collection error is what the mutation causes, which it is not meant to).
                verdict = "caught" if code == 1 else "SURVIVED" if code == 0 else f"error {code}"
                if code != 1:
                    survived.append(mutant.name)
            print(f"[{i:2d}/{len(chosen)}] {verdict:<9} {mutant.name}", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    caught = len(chosen) - len(survived) - len(stale)
    elapsed = time.monotonic() - started
    print(f"mutants: {len(chosen)} tried, {caught} caught, {len(survived)} survived, "
          f"{len(stale)} stale, {elapsed:.0f} s")  # fmt: skip
    for name in survived + stale:
        print(f"  not caught: {name}")
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
