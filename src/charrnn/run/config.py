"""The train config's checks (a bad value fails in one line naming it) and its resolvers,
registered on import of charrnn.run: a parallel launcher's workers never run the entry point."""

import contextlib
import importlib
import os
import re
import sys

from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError, check, exit_with, number, one_of, whole

# every value Lightning 2.6's Trainer accepts (ints and their strings too)
PRECISIONS = (  # auto is ours (charrnn.run.train.choose_precision)
    *("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"),
    *("32", "16", "bf16", "64", "transformer-engine", "transformer-engine-float16"),
)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
FLOAT32_MAX = 3.4028234663852886e38  # an optimizer.lr beyond it overflows inside the step
LR_HINT = "use a number > 0 (and below 3.4e38, the largest float32)"
LAST_AT_EPOCH_ENDS = " to write last.ckpt at epoch ends only"


def _codec(name) -> bool:
    try:  # a LookupError for unknown and for non-text codecs (rot13)
        return isinstance("".encode(name), bytes)
    except (LookupError, TypeError):
        return False


POSITIVE = (lambda v: whole(v) and v > 0), "use a whole number > 0"
PROBABILITY = (lambda v: number(v) and 0 <= v < 1), "use a probability in [0, 1)"
PATH = (lambda v: isinstance(v, str)), "use a path"
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
SHA256 = (lambda v: isinstance(v, str) and HEX64.fullmatch(v)), "use the file's 64-hex-digit sha256"
ABOVE_0 = (lambda v: number(v) and v > 0), "use a number > 0"
FRACTION = (lambda v: number(v) and 0 < v < 1), "use a fraction strictly between 0 and 1"
EPOCHS = (lambda v: whole(v) and (v > 0 or v == -1)), "use a whole number > 0 (-1: no limit)"


def or_null(rule: tuple, null_means: str = "") -> tuple:
    ok, allowed = rule
    return (lambda v: v is None or ok(v)), f"{allowed}, or null{null_means}"


RULES = {  # key -> (test, what to use instead); a missing optional key reads as None
    **{f"model.{k}": POSITIVE for k in ("embedding_dim", "rnn_units", "num_layers")},
    **{f"model.{k}": PROBABILITY for k in ("dropout", "emb_dropout", "out_dropout", "weight_drop")},
    "model.locked_dropout": ((lambda v: isinstance(v, bool)), "use true or false"),
    **{f"data.{k}": POSITIVE for k in ("seq_length", "batch_size", "val_streams")},
    "data.val_frac": FRACTION,
    "data.sha256": or_null(SHA256, " to skip the check"),
    "data.encoding": (_codec, "use a text encoding Python knows, e.g. utf-8, latin-1 or cp1252"),
    "data.separator": ((lambda v: isinstance(v, str)), "use a string (a blank line: '\\n\\n')"),
    "data.val_window": or_null(POSITIVE, " for no zero-state windows"),
    "data.download_timeout": ABOVE_0,  # seconds
    "trainer.precision": one_of(PRECISIONS),
    "trainer.accelerator": one_of(ACCELERATORS),
    "trainer.max_epochs": or_null(EPOCHS),
    "trainer.gradient_clip_val": or_null(ABOVE_0, " for no clipping"),
    "optimizer.lr": ((lambda v: number(v) and 0 < v < FLOAT32_MAX), LR_HINT),
    "threads": or_null(POSITIVE, " for all cores"),
    "callbacks.last_checkpoint.every_n_train_steps": or_null(POSITIVE, LAST_AT_EPOCH_ENDS),
    **{key: or_null(PATH) for key in ("ckpt_path", "resume")},
}


def validate_train(cfg: DictConfig) -> None:
    """Every user-facing value of a training config, checked against its allowed range."""
    from charrnn.net import IMPLS, RNN_LAYERS  # here: registering the resolvers needs no torch

    rules = {"model.cell": one_of(tuple(RNN_LAYERS)), "model.impl": one_of(IMPLS), **RULES}
    check(lambda key: OmegaConf.select(cfg, key, default=None), rules)


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity: respects taskset, cgroups, SLURM)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_per_job(n_jobs: int | None = None) -> int | None:
    """The cores shared out among the jobs a launcher runs at once (n_jobs, by default
    hydra.launcher.n_jobs, as joblib reads it: -1 one job per core, ...); None without one."""
    if n_jobs is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
    if n_jobs is None:
        return None
    cores = machine_cores()
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // jobs)


def run_name(override_dirname: str, limit: int = 200) -> str:
    """A job's override_dirname as a directory (and TensorBoard run) name: numbers to 4 digits
    (Optuna suggests 0.0013922830138102383), cut at `limit` at an item boundary when it can."""
    items = []
    for item in override_dirname.split(","):
        key, sep, value = item.partition("=")
        if len(value) > 8 and not value.lstrip("-").isdigit():
            with contextlib.suppress(ValueError):  # not a number
                value = f"{float(value):.4g}"
        items.append(key + sep + value)
    name = ",".join(items)
    if len(name) <= limit:
        return name
    cut = name.rfind(",", 0, limit)
    return name[: cut if cut > 0 else limit]


def hydra_quoted(text: str) -> str:
    """`text` as a quoted Hydra override value that reads back as exactly this string."""
    # inside quotes Hydra reads \' as a quote; backslashes before one or at the end double
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text) + "'"


def quote_free_text(argv: list[str]) -> list[str]:
    """argv with each key=value Hydra would not read as typed quoted, before Hydra parses it: it
    rejects unquoted non-ASCII (prompt=café), and a prompt is text, never a sweep (prompt=Hi, you)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def as_typed(arg: str) -> str:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq:
            return arg
        with contextlib.suppress(HydraException):
            parsed = parser.parse_override(arg).value()
            if isinstance(parsed, str) or key.lstrip("+~").rsplit(".", 1)[-1] != "prompt":
                return arg
        return f"{key}={hydra_quoted(value)}"

    return [argv[0], *map(as_typed, argv[1:])]


def run_command_line(name: str, command: str) -> None:
    """`python src/<name>.py key=value ...`: free text quoted for Hydra, conf/<name>.yaml composed,
    then `command` ("module:function") imported, so torch loads only after the arguments parse."""
    import hydra

    sys.argv = quote_free_text(sys.argv)
    module, function = command.split(":")
    conf = os.path.join(os.path.dirname(__file__), "..", "..", "..", "conf")

    @hydra.main(version_base="1.3", config_path=os.path.abspath(conf), config_name=name)
    def main(cfg: DictConfig) -> None:
        try:
            getattr(importlib.import_module(module), function)(cfg)
        except CharRNNError as err:
            exit_with(err)  # a user mistake: one line
        except BrokenPipeError:  # `| head` closed the pipe: end quietly
            sys.stderr.close()
            os._exit(0)

    main()


OmegaConf.register_new_resolver("cores_per_job", cores_per_job, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
