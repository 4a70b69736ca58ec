"""Every script in cleandppo/ reads alone, so the building blocks that several of them need are copied into each. This
test keeps the copies one text: every top-level function, class or UPPER_CASE constant defined in more than one of the
ten scripts must have, in each script, exactly the source (decorators, signature, docstring, comments, layout) of the
reference copy, the one in the first script of SCRIPTS that defines it (dppo.py's when it has one).

Two lists name the exceptions, each with its reason:
- PER_SCRIPT: names that every script defines for itself (its flags, tables, loop, checkpoint): same job, own content;
- INTENDED: single copies that differ from the reference on purpose. The copies listed with the same reason for the
  same block form one variant and must be one text among themselves; two variants of a block (the reference included)
  must differ, so an entry whose difference has gone fails here and has to be removed.
The behaviour of the shared blocks is tested in test_shared_copies.py (and per script); here only their text."""

import ast
import difflib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [
    "dppo",
    "gaussian_ppo",
    "gmm_ppo",
    "dawr",
    "drwr",
    "dipo",
    "idql",
    "dql",
    "qsm",
    "exact_likelihood_pg",
]

# Same name for the same job in every script, content of its own (compared nowhere).
PER_SCRIPT = {
    "ALGO": "the script's name",
    "Args": "the script's flags",
    "ROBOMIMIC": "the script's robomimic table (official cfg/robomimic/finetune/<task>/ft_<algo>_*.yaml)",
    "ROBOMIMIC_TASK": "the script's per-task robomimic values",
    "ROBOMIMIC_IMG": "the script's robomimic pixel table (official cfg/robomimic/*/<task>/*_<policy>_mlp_img.yaml)",
    "ROBOMIMIC_IMG_TASK": "the script's per-task robomimic pixel values",
    "AVOID": "the script's Avoid table",
    "SCRATCH": "the script's --from-scratch preset",
    "task_defaults": "which of the script's tables apply",
    "check_args": "the script's own input checks",
    "load_diffusion_checkpoint": "the checks of the script's own checkpoint fields",
    "eval_act": "the script's policy and evaluation rule",
    "main": "the script's loop",
    "ppo_update": "the script's policy and loss",
    "pretrain": "the script's policy and pre-training loss",
    "model_kwargs_from": "the script's network description",
    "_load_policy": "Gaussian vs GMM policy",
    "sample_action": "Gaussian vs GMM policy",
    "log_prob": "Gaussian vs GMM policy",
    "entropy": "Gaussian vs GMM policy",
}

DDPM_ONLY = "DDPM only: DDIM sampling (--ddim-steps) is dppo.py's alone"
ONE_NETWORK = "one network over the whole K-step chain: the baselines fine-tune every step, no chain is recorded"
BASE_MODEL = "any diffusion checkpoint's base 'model' (never DPPO's 'model_ft'); own checkpoints resume"
PLAIN_MLP = "also builds plain MLPs: the official Gaussian/GMM configs use [256, 256] and residual_style False ones"
# (script, block) -> why its copy differs from the reference copy.
INTENDED = {
    **{(s, "step_mean_var"): DDPM_ONLY for s in SCRIPTS[3:]},
    **{(s, "denoising_plan"): DDPM_ONLY for s in SCRIPTS[3:]},
    ("exact_likelihood_pg", "sample"): "dppo.py's sampler without DDIM",
    **{(s, "sample"): ONE_NETWORK for s in ("dawr", "drwr", "dipo", "idql", "qsm")},
    ("dql", "sample"): ONE_NETWORK + "; a grad flag: DQL's actor loss backpropagates through the whole chain",
    **{(s, "denoising_loss"): "per-sample weights (paper eqs. A1, A2)" for s in ("dawr", "drwr")},
    **{(s, "ResidualMLP"): PLAIN_MLP for s in ("gaussian_ppo", "gmm_ppo")},
    ("gmm_ppo", "TransformerBackbone"): "no output head: the GMM heads read the token features",
    ("gaussian_ppo", "load_start"): "a Gaussian checkpoint, --from-scratch, --record-dataset",
    ("gmm_ppo", "load_start"): "a GMM checkpoint and its modes, --report-official-clamp",
    **{(s, "load_start"): BASE_MODEL for s in ("dawr", "drwr", "dipo", "idql", "dql", "qsm")},
    ("exact_likelihood_pg", "load_start"): "its own checkpoints go on with 'model_ft'; others start from 'model'",
    ("gaussian_ppo", "make_checkpoint"): "a Gaussian policy",
    ("gmm_ppo", "make_checkpoint"): "a GMM policy",
    **{
        (s, "ReplayBuffer"): "one row per env transition; DAWR's rows are vector steps, kept in order for TD(lambda)"
        for s in ("dipo", "idql", "dql", "qsm")
    },
}
REFERENCE = "the reference copy"


def top_level_blocks(script):
    """name -> source of each top-level def/class (decorators included) and UPPER_CASE assignment, as whole lines."""
    with open(os.path.join(ROOT, "cleandppo", f"{script}.py")) as f:
        text = f.read()
    lines, blocks = text.splitlines(keepends=True), {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            name = node.targets[0].id
        else:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        blocks[name] = "".join(lines[start - 1 : node.end_lineno])
    return blocks


BLOCKS = {script: top_level_blocks(script) for script in SCRIPTS}
SHARED = sorted({name for b in BLOCKS.values() for name in b if sum(name in c for c in BLOCKS.values()) > 1})


def variants(block):
    """reason (REFERENCE for the unlisted copies) -> {script: source}, scripts in SCRIPTS order."""
    out = {}
    for script in SCRIPTS:
        if block in BLOCKS[script]:
            out.setdefault(INTENDED.get((script, block), REFERENCE), {})[script] = BLOCKS[script][block]
    return out


def diff(a_name, a, b_name, b):
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), a_name, b_name))


@pytest.mark.parametrize("block", [b for b in SHARED if b not in PER_SCRIPT])
def test_every_copy_of_a_shared_block_is_the_text_of_its_variant(block):
    groups = variants(block)
    assert REFERENCE in groups, f"{block}: the first script that defines it must hold the reference copy"
    for reason, copies in groups.items():
        (first, text), *others = copies.items()
        for script, other in others:
            where = f"{block}: cleandppo/{script}.py's copy differs from cleandppo/{first}.py's"
            assert other == text, f"{where} ({reason}):\n" + diff(first, text, script, other)
    texts = {reason: next(iter(copies.values())) for reason, copies in groups.items()}
    for reason, text in texts.items():
        for other_reason, other in texts.items():
            same = f"{block}: the copies listed as {other_reason!r} are now {reason!r}'s text; drop them from INTENDED"
            assert reason == other_reason or text != other, same


def test_the_lists_of_exceptions_name_existing_blocks():
    for script, block in INTENDED:
        assert block in BLOCKS[script] and block in SHARED, f"INTENDED names {block} in {script}.py, which has none"
    for block in PER_SCRIPT:
        holders = [s for s in SCRIPTS if block in BLOCKS[s]]
        assert len(holders) > 1, f"PER_SCRIPT names {block}, defined in {holders} only"
        texts = {BLOCKS[s][block] for s in holders}
        assert len(texts) > 1, (
            f"every copy of {block} is one text: compare it as a shared block (drop it from PER_SCRIPT)"
        )


def test_the_diffusion_network_code_is_one_text_in_the_eight_diffusion_scripts():
    """A checkpoint of any diffusion script loads in every other one: the networks and the schedule are one text in the
    eight diffusion scripts, with no listed exception."""
    diffusion = [s for s in SCRIPTS if "DiffusionMLP" in BLOCKS[s]]
    assert len(diffusion) == 8
    for block in ("SinusoidalPosEmb", "ResidualMLP", "DiffusionMLP", "Conv1dBlock", "FiLMResidualBlock"):
        assert len({BLOCKS[s][block] for s in diffusion}) == 1, block
    for block in ("DiffusionUNet", "build_network", "cosine_beta_schedule", "make_schedule"):
        assert len({BLOCKS[s][block] for s in diffusion}) == 1, block
