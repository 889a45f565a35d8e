"""The commands and paths of the README and of ``docs/`` agree with the CLI, the configs and the code.

Every command of a ``bash`` code block in ``README.md`` and ``docs/**/*.md`` is checked:

* each ``hglv2`` command is parsed by the CLI (its subcommand and every option exist);
* each ``make`` target exists, each benchmark script exists and takes the flags shown;
* each ``python`` block compiles and its imports resolve;
* each command is then classified by ``RULES`` (first match): ``run`` (run here, verbatim and once
  even when several pages show it, in a scratch folder, plus size-only options where ``SIZE`` names
  them; a ``make`` target that would build a venv runs as its recipe, ``RUN_AS``), ``covered``
  (run by the named test, which exists), or ``skip`` with the reason (the network, a GPU, the full
  release, hours, or the same code path as a command run here). A command that no rule matches
  fails the test, so a new command in the docs must be given a rule.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from hglv2.cli import main
from hglv2.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEXT = {p: p.read_text(encoding="utf-8") for p in PAGES}
README = TEXT[ROOT / "README.md"]
ALL = "\n".join(TEXT.values())


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    """The code blocks of language ``lang`` as (page, first line, text)."""
    found = []
    for path, text in TEXT.items():
        for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.M | re.S):
            line = text.count("\n", 0, m.start()) + 2
            found.append((path.relative_to(ROOT).as_posix(), line, m.group(1)))
    return found


def _commands() -> list[Command]:
    """Every shell command: continuation lines joined, comments and blank lines dropped."""
    out = []
    for page, first, body in _blocks("bash"):
        joined, start = "", None
        for k, raw in enumerate(body.splitlines()):
            if start is None:
                start = first + k
            joined += raw.rstrip().removesuffix("\\") + " "
            if raw.rstrip().endswith("\\"):
                continue
            words = shlex.split(joined, comments=True)
            if words:
                out.append(Command(page, start, " ".join(words)))
            joined, start = "", None
    return out


COMMANDS = _commands()

# Size-only options appended to a command run here (a later option overrides an earlier one).
SIZE = {
    "hglv2 synthesize": ["--train-images", "2", "--query-images", "1", "--index-images", "2", "--quiet"],
    "hglv2 train synthetic": ["--set", "train.steps=2", "--set", "train.eval_batch_size=32", "--quiet"],
    "hglv2 benchmark synthetic": ["--steps", "2", "--jobs", "1", "--quiet"],
}

# A make target that would build a venv (`make install`) runs as the recipe it then runs, with the
# test's own Python.
RUN_AS = {"make hierarchy": "make -f pipelines/hierarchy.mk all"}

DATASETS = "tests/test_integration_datasets.py"
NETWORK = "skip: the network (the transfer is tested against servers on 127.0.0.1: {})"
# (regex on the command, what happens to it). First match wins.
RULES: list[tuple[str, str]] = [
    # the commands run here, in document order, in one scratch folder
    (r"^hglv2 evaluate --example$", "run"),
    (r"^hglv2 export --metadata data/gldv2 --out data/h-gldv2$", "run"),  # data/gldv2 = data/sample
    (r"^hglv2 synthesize --out runs/data/synthetic$", "run"),
    (r"^hglv2 train synthetic --threads 1$", "run"),
    (r"^hglv2 evaluate --checkpoint runs/synthetic --data runs/data/synthetic", "run"),
    (r"^hglv2 benchmark synthetic --losses SupAP,SupHAP --steps 300 --out runs/my-bench$", "run"),
    (r"^hglv2 evaluate -e emb\.npy -l labels\.npy", "run"),
    (r"^hglv2 evaluate -e q\.parquet --gallery-embeddings index\.parquet", "run"),
    # run by other tests
    (r"^make test$", "skip: the test suite itself"),
    (r"^make demo$", "skip: minutes; its two steps are `make hierarchy` and `hglv2 benchmark`"),
    (r"^make hierarchy$", "run"),  # as RUN_AS: its recipe after `make install`
    (r"^make -f pipelines/hierarchy\.mk review$", "run"),
    (r"^hglv2 evaluate --solution retrieval_solution_v2\.1\.csv --submission submission\.csv$", "run"),
    (r"^make -f pipelines/hierarchy\.mk .*ONLINE=1", "skip: Wikidata over the network (hours)"),
    (r"^hglv2 evaluate --checkpoint runs/(sop|inat2018|inat-base|dyml-\w+|cub) ", f"covered: {DATASETS}"),
    (r"^hglv2 (convert|train) (sop|inat2018|inat-base|dyml-\w+|cub)\b", f"covered: {DATASETS}"),
    (r"^hglv2 download --dest", NETWORK.format("tests/test_data_network.py")),
    (r"^hglv2 download images", NETWORK.format("tests/test_data_images_download.py")),
    (r"^hglv2 prepare-images", "covered: tests/test_data_images.py (the downloaded shards are the input)"),
    (r"^hglv2 evaluate --checkpoint runs/h-gldv2", "skip: a model trained on the full release"),
    (
        r"^hglv2 evaluate .*--device cuda",
        "skip: a GPU (the device engine is tested on CPU in tests/test_metrics_topk_device.py)",
    ),
    (
        r"^hglv2 benchmark($| --seeds)",
        "skip: minutes; the same code path as the tour's `hglv2 benchmark synthetic`, run here",
    ),
    (
        r"^torchrun ",
        "skip: several processes (tests/test_losses_distributed.py checks DDP equals one process)",
    ),
    (r"^(OMP_NUM_THREADS=\d+ )?python benchmarks/", "skip: a benchmark (minutes to hours; `make bench`)"),
]


def _rule(cmd: Command) -> str:
    for pattern, what in RULES:
        if re.search(pattern, cmd.text):
            return what
    raise AssertionError(f"no rule in RULES for {cmd}")


def _hglv2_args(cmd: Command) -> list[str] | None:
    words = shlex.split(cmd.text)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if words[:1] == ["hglv2"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "hglv2.cli" in words:
        return words[words.index("hglv2.cli") + 1 :]
    return None


def _parse(args: list[str]) -> None:
    """Resolve the subcommands and parse the options as click does, without running anything.

    Only the option parser runs on a leaf command: names and arities are checked, values are
    neither converted nor validated (the files a command names exist only on the reader's machine).
    """
    command, ctx, name = main, None, "hglv2"
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=ctx)
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9.0 puts all in args
            warnings.simplefilter("ignore", DeprecationWarning)
            command.parse_args(ctx, list(args))
            rest = [*ctx.protected_args, *ctx.args]
        assert rest, f"{name} needs a subcommand"
        name, command, args = command.resolve_command(ctx, rest)
    command.make_parser(click.Context(command, info_name=name, parent=ctx)).parse_args(list(args))


def test_parse_refuses_unknown_commands_and_options():
    with pytest.raises(click.UsageError):
        _parse(["evaluate", "--no-such-option"])
    with pytest.raises(click.UsageError):
        _parse(["no-such-command"])
    with pytest.raises(click.UsageError):
        _parse(["hierarchy", "no-such-stage"])
    _parse(["download", "--dest", "d", "--contact", "c"])  # the group's default subcommand


def test_every_command_has_a_rule():
    assert COMMANDS, "the docs show commands"
    for cmd in COMMANDS:
        what = _rule(cmd)
        assert what == "run" or what.startswith(("covered: ", "skip: ")), (cmd, what)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if _hglv2_args(c) is not None], ids=str)
def test_hglv2_commands_parse(cmd):
    _parse(_hglv2_args(cmd))


def test_covering_tests_exist():
    for cmd in COMMANDS:
        what = _rule(cmd)
        if what.startswith("covered: "):
            target = re.match(r"covered: (tests/\S+?\.py)(?:::(\w+))?", what)
            source = (ROOT / target.group(1)).read_text(encoding="utf-8")
            if target.group(2):
                assert f"def {target.group(2)}(" in source, what
    from tests.test_integration_datasets import COMMANDS as RUN_BY_DATASETS

    run = {c for seq in RUN_BY_DATASETS.values() for c in seq}
    for cmd in COMMANDS:
        if _rule(cmd) == f"covered: {DATASETS}":
            assert cmd.text in run, f"{cmd} is not among the commands {DATASETS} runs"


def test_make_targets_and_benchmark_flags_exist():
    for cmd in COMMANDS:
        words = [w for w in shlex.split(cmd.text) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
        if words[0] == "make":
            makefile = words[words.index("-f") + 1] if "-f" in words else "Makefile"
            targets = [w for w in words[1:] if not w.startswith("-") and w != makefile] or ["all"]
            text = (ROOT / makefile).read_text(encoding="utf-8")
            for t in targets:
                assert re.search(rf"^{re.escape(t)}\s*:", text, re.M), f"{cmd}: no target {t} in {makefile}"
        elif words[0] == "python" and words[1].startswith("benchmarks/"):
            source = (ROOT / words[1]).read_text(encoding="utf-8")
            for flag in (w for w in words[2:] if w.startswith("--")):
                assert f'"{flag}"' in source, f"{cmd}: {words[1]} has no {flag}"


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda b: f"{b[0]}:{b[1]}")
def test_python_blocks_compile_and_import(block):
    """The blocks use the reader's own model, images and embeddings, so only their imports run."""
    page, line, body = block
    tree = ast.parse(body, filename=f"{page}:{line}")
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    exec(compile(ast.Module(body=imports, type_ignores=[]), f"{page}:{line}", "exec"), {})


def _scratch(folder: Path) -> None:
    """The inputs the run commands name: GLDv2 metadata (the embedded sample) and embeddings."""
    shutil.copytree(ROOT / "data" / "sample", folder / "data" / "gldv2")
    solution = (ROOT / "data" / "sample" / "retrieval_solution_v2.1.csv").read_text(encoding="utf-8")
    (folder / "retrieval_solution_v2.1.csv").write_text(solution, encoding="utf-8")
    rows = [line.split(",")[:2] for line in solution.splitlines()[1:]]  # a perfect submission
    lines = ["id,images", *(f"{i},{'' if images == 'None' else images}" for i, images in rows)]
    (folder / "submission.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    labels = np.stack([np.arange(40) // 4, np.arange(40) // 8, np.arange(40) // 20], axis=1)
    np.save(folder / "emb.npy", emb)
    np.save(folder / "labels.npy", labels)
    for name, rows in (("q.parquet", slice(0, 10)), ("index.parquet", slice(10, 40))):
        table = {"embedding": pa.array(emb[rows].tolist(), pa.list_(pa.float32()))}
        table |= {f"level{k}": labels[rows, k] for k in range(3)}
        pq.write_table(pa.table(table), folder / name)


@pytest.mark.slow
def test_run_commands(tmp_path, monkeypatch):
    """The ``run`` commands, verbatim, each once, in document order (plus ``SIZE``), in one scratch folder."""
    _scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = {c.text: c for c in reversed(COMMANDS) if _rule(c) == "run"}  # a repeat on another page runs once
    for cmd in sorted(run.values(), key=COMMANDS.index):
        if cmd.text.startswith("make "):  # from the repository root, into the scratch folder
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable, "OUT": str(tmp_path / "out")}
            words = shlex.split(RUN_AS.get(cmd.text, cmd.text))
            res = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"
            continue
        args = _hglv2_args(cmd)
        extra = next((v for k, v in SIZE.items() if cmd.text.startswith(k)), [])
        res = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
        assert res.exit_code == 0, f"{cmd}: {res.output}"
    assert (tmp_path / "out" / "hierarchy.parquet").is_file() and (tmp_path / "out" / "splits").is_dir()
    assert json.loads(Path("eval.json").read_text())["results"]
    assert (tmp_path / "runs" / "my-bench" / "report.md").is_file()


def test_readme_export_path_is_the_h_gldv2_config_data_root():
    """Following the docs (download, export), ``hglv2 train h-gldv2`` finds the export and the images."""
    exports = re.findall(r"^hglv2 export --metadata (\S+) --out (\S+)", ALL, re.M)
    assert exports, "the README shows the export command"
    cfg = load_config("h-gldv2")["data"]
    for _metadata, out in exports:
        assert out == cfg["root"], f"the docs export to {out}, h-gldv2 reads {cfg['root']}"
    dests = set(re.findall(r"^hglv2 download images .*--dest (\S+)", ALL, re.M))
    dests |= {m for m, _ in exports}
    assert len(dests) == 1, dests
    dest = dests.pop()
    # image shards land in <dest>/<split>/images_NNN.tar (hglv2 download images --split train|index|test)
    assert cfg["image_root"] == {"train": f"{dest}/train", "index": f"{dest}/index", "query": f"{dest}/test"}
    paths = re.findall(r'HGLDv2Dataset\("([^"]+)\.parquet"', ALL)
    assert paths
    for path in paths:
        assert Path(path).parent.as_posix() == cfg["root"]


def test_readme_names_the_benchmark_run_folders():
    """Run folders are ``<out>/runs/<loss>/seed<k>/`` (``hglv2.benchmark``), as the docs say."""
    assert "`<out>/runs/<loss>/seed<k>/`" in ALL
    assert "`runs/benchmark/synthetic/runs/SupAP/seed0/`" in ALL
    assert not re.search(r"trains in `runs/<loss>", ALL)


def test_readme_is_a_landing_page():
    """The README stays short and links into every docs page."""
    assert len(README.splitlines()) <= 250
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"(docs/{page.name}" in README, f"README does not link docs/{page.name}"
