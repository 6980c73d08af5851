"""Nothing lost, ever: unsafe destinations, damaged files and odd inputs, for all four commands.

Every case gets one ``error:`` line on stderr (no traceback), the documented exit code,
and leaves inputs and unrelated files untouched. Issue 8 lists the cases.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from genepanel.cli import app
from genepanel.io import MARKER, atomic_write
from tests.conftest import ROOT, planted

runner = CliRunner()
FAST = ["--epochs", "3", "--batch-size", "32", "--lr", "0.01", "--seed", "1", "-q",
        "--no-baselines"]
CMP_FAST = ["--trials", "1", "--epochs", "2", "--mlp", "4", "--min-found", "0.1", "-q"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(result, code, *patterns):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output and "allow_pickle" not in result.output
    for p in patterns:
        assert p in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A planted ``.h5ad``, a finished run folder on it and a reference gene list."""
    tmp = tmp_path_factory.mktemp("bad")
    x, genes, drivers, _ = planted(n=300)
    a = ad.AnnData(x)
    a.var_names = genes
    data = tmp / "x.h5ad"
    a.write_h5ad(data)
    res = _run("select", data, "--k", 4, "--out", tmp / "run", *FAST)
    assert res.exit_code == 0, res.output
    ref = tmp / "ref.txt"
    ref.write_text("\n".join(drivers) + "\n")
    return tmp, data, tmp / "run", ref


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run, dst)
    return dst


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- --overwrite


def test_select_overwrite_never_deletes_a_folder_holding_the_input(setup, tmp_path):
    _, data, _, _ = setup
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.h5ad").write_bytes(data.read_bytes())
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    _one_line(_run("select", d / "x.h5ad", "--k", 3, "--out", d, "--overwrite", *FAST), 2,
              "holds the input")
    assert _snapshot(d) == before and not (tmp_path / "d.partial").exists()


@pytest.mark.parametrize("command", ["select", "benchmark"])
def test_out_equal_to_the_input_file_is_refused(setup, tmp_path, command):
    _, data, _, _ = setup
    x = tmp_path / "x.h5ad"
    x.write_bytes(data.read_bytes())
    before = x.read_bytes()
    extra = FAST if command == "select" else ["--epochs", "2", "-q", "--methods", "random"]
    _one_line(_run(command, x, "--k", 3, "--out", x, "--overwrite", *extra), 2, "is the input")
    assert x.read_bytes() == before


@pytest.mark.parametrize("command", ["select", "benchmark"])
def test_overwrite_refuses_folders_genepanel_did_not_write(setup, tmp_path, command):
    _, data, _, _ = setup
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    extra = FAST if command == "select" else ["--epochs", "2", "-q", "--methods", "random"]
    _one_line(_run(command, data, "--k", 3, "--out", mine, "--overwrite", *extra), 2,
              "genepanel did not write", MARKER)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_benchmark_overwrite_holding_input_and_run_folder_marker(setup, tmp_path):
    _, data, _, _ = setup
    d = tmp_path / "d"
    d.mkdir()
    (d / "x.h5ad").write_bytes(data.read_bytes())
    args = ["--k", 3, "--epochs", "2", "-q", "--methods", "random"]
    _one_line(_run("benchmark", d / "x.h5ad", "--out", d, "--overwrite", *args), 2,
              "holds the input")
    assert (d / "x.h5ad").read_bytes() == data.read_bytes()
    out = tmp_path / "b"
    assert _run("benchmark", data, "--out", out, *args).exit_code == 0
    assert (out / MARKER).is_file()
    assert _run("benchmark", data, "--out", out, "--overwrite", *args).exit_code == 0


def test_compare_landmarks_never_overwrites_the_run_it_compares(setup, tmp_path):
    _, data, run, ref = setup
    panel = _copy_run(run, tmp_path / "r")
    before = _snapshot(panel)
    _one_line(_run("compare-landmarks", data, "--run", panel, "--out", panel, "--overwrite",
                   "--reference", ref, *CMP_FAST), 2, "is the input")
    _one_line(_run("compare-landmarks", data, "--run", panel, "--out", tmp_path,
                   "--overwrite", "--reference", ref, *CMP_FAST), 2, "holds the input")
    assert _snapshot(panel) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    _one_line(_run("compare-landmarks", data, "--run", panel, "--out", mine, "--overwrite",
                   "--reference", ref, *CMP_FAST), 2, "genepanel did not write")


def test_run_folders_carry_the_marker_and_can_be_overwritten(setup, tmp_path):
    _, data, run, ref = setup
    assert json.loads((run / MARKER).read_text())["command"] == "select"
    out = tmp_path / "c"
    args = ["compare-landmarks", data, "--run", run, "--reference", ref, "--out", out,
            *CMP_FAST]
    assert _run(*args).exit_code == 0
    assert json.loads((out / MARKER).read_text())["command"] == "compare-landmarks"
    (out / "stale.txt").write_text("x")
    r = _run(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / "stale.txt").exists() and (out / "report.md").is_file()


def test_out_dot_is_one_line(setup, tmp_path, monkeypatch):
    _, data, _, _ = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("keep")
    _one_line(_run("select", data, "--k", 3, "--out", ".", *FAST), 2, "already exists")
    _one_line(_run("select", data, "--k", 3, "--out", ".", "--overwrite", *FAST), 2,
              "genepanel did not write")
    assert (tmp_path / "keep.txt").read_text() == "keep"


# --------------------------------------------------------------------------- I/O failures


def test_unwritable_out_is_one_line(setup, tmp_path):
    _, data, _, _ = setup
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line(_run("select", data, "--k", 3, "--out", blocker / "run", *FAST), 1,
              "cannot write")


def test_read_only_out_is_one_line(setup, tmp_path, monkeypatch):
    """A read-only folder (EROFS/EACCES injected: the tests may run as root)."""
    import pathlib

    _, data, _, _ = setup
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    _one_line(_run("select", data, "--k", 3, "--out", tmp_path / "ro" / "run", *FAST), 1,
              "cannot write", "Read-only file system")


@pytest.mark.parametrize("command", ["select", "compare-landmarks"])
def test_full_disk_is_one_line_and_leaves_no_output(setup, tmp_path, monkeypatch, command):
    _, data, run, ref = setup

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("genepanel.io.os.fsync", full)
    out = tmp_path / "o"
    if command == "select":
        r = _run("select", data, "--k", 3, "--out", out, *FAST)
    else:
        r = _run("compare-landmarks", data, "--run", run, "--reference", ref, "--out", out,
                 *CMP_FAST)
    _one_line(r, 1, "No space left on device")
    assert not out.exists()
    assert not list(tmp_path.rglob("*.tmp"))


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import errno, os, sys
    from genepanel import imputation
    limit = int(sys.argv.pop(1))
    class Full:  # the disk fills after `limit` bytes
        def __init__(self, fh):
            self.fh, self.n = fh, 0
        def write(self, b):
            self.n += len(memoryview(b))
            if self.n > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(b)
        def __getattr__(self, name):
            return getattr(self.fh, name)
    real_init = imputation._DiscardableFile.__init__
    def init(self, path):
        real_init(self, path)
        self._fh = Full(self._fh)
    imputation._DiscardableFile.__init__ = init
    from genepanel.cli import main
    sys.argv = ["genepanel", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.parametrize("limit", [1000, 10000, 25000])
def test_impute_onto_a_full_disk_exits_1_without_crashing(setup, tmp_path, limit):
    """HDF5 used to fail again on close and crash the interpreter at exit (SIGSEGV/SIGBUS).

    The disk fills at different points: while the file is created, between row batches,
    and while HDF5 flushes on close.
    """
    _, data, run, _ = setup
    out = tmp_path / "o.h5ad"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(limit), "impute", str(data), "--run",
         str(run), "--out", str(out), "--batch-size", "50"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: cannot write {out}: No space left on device; free some space "
                     "or choose another --out"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_impute_onto_a_real_full_tmpfs(setup, tmp_path):
    """The same on a real 1 MiB tmpfs, where mounting is allowed (root); skipped elsewhere."""
    _, data, run, _ = setup
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    if not ok:
        pytest.skip("cannot mount a tmpfs here")
    try:
        x = np.tile(ad.read_h5ad(data).X, (40, 1))
        big = tmp_path / "big.h5ad"
        b = ad.AnnData(x)
        b.var_names = ad.read_h5ad(data).var_names
        b.write_h5ad(big)
        proc = subprocess.run(
            [sys.executable, "-m", "genepanel", "impute", str(big), "--run", str(run),
             "--out", str(mnt / "o.h5ad")],
            cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
            text=True, timeout=120,
        )
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_files_get_the_umasks_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


def test_run_folder_and_impute_output_are_readable_by_others(setup, tmp_path):
    _, data, run, _ = setup
    old = os.umask(0o022)
    try:
        r = _run("impute", data, "--run", run, "--out", tmp_path / "i.h5ad", "-q")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "i.h5ad").stat().st_mode) == 0o644
    for f in ("panel.tsv", "model.json", "decoder.npz", "history.png", MARKER):
        assert stat.S_IMODE((run / f).stat().st_mode) & 0o044 == 0o044, f


# --------------------------------------------------------------------------- live runs


def test_a_live_run_holds_the_folder(setup, tmp_path):
    _, data, _, _ = setup
    out = tmp_path / "r"
    staging = tmp_path / "r.partial"
    staging.mkdir()
    (staging / MARKER).write_text(json.dumps({"pid": 4242}))
    fd = os.open(staging, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            _one_line(_run("select", data, "--k", 3, "--out", out, *FAST, *extra), 2,
                      "in use by a running genepanel", "pid 4242")
    finally:
        os.close(fd)
    # released: now it is an interrupted run, not a live one
    _one_line(_run("select", data, "--k", 3, "--out", out, *FAST), 2,
              "an interrupted run left")


# --------------------------------------------------------------------------- --resume


def _interrupted(data: Path, out: Path) -> None:
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig

    cfg = SelectConfig(k=3, seed=1).replace(**{"train.max_epochs": 6, "train.batch_size": 32})
    with pytest.raises(Exception, match="interrupted"):
        select_panel(data, cfg, out, evaluate_baselines=False, stop_after_epochs=2)


RESUME = ["--k", 3, "--epochs", 6, "--batch-size", 32, "--seed", 1, "-q", "--no-baselines",
          "--resume"]


def test_resume_refuses_another_input(setup, tmp_path):
    _, data, _, _ = setup
    out = tmp_path / "r"
    _interrupted(data, out)
    other = tmp_path / "other.h5ad"  # same genes and shape, other values
    x, _, _, _ = planted(n=300, seed=9)
    a = ad.AnnData(x)
    a.var_names = ad.read_h5ad(data).var_names
    a.write_h5ad(other)
    _one_line(_run("select", other, "--out", out, *RESUME), 2, "input differs")
    smaller = tmp_path / "small.h5ad"
    ad.read_h5ad(data)[:200].copy().write_h5ad(smaller)
    _one_line(_run("select", smaller, "--out", out, *RESUME), 2, "input differs", "200 × 50")
    # a copy of the same file resumes
    same = tmp_path / "same.h5ad"
    same.write_bytes(data.read_bytes())
    r = _run("select", same, "--out", out, *RESUME)
    assert r.exit_code == 0, r.output


def test_resume_refuses_a_damaged_checkpoint(setup, tmp_path):
    _, data, _, _ = setup
    out = tmp_path / "r"
    _interrupted(data, out)
    ckpt = tmp_path / "r.partial" / "checkpoints" / "state.msgpack"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    _one_line(_run("select", data, "--out", out, *RESUME), 1, "damaged", "--overwrite")


# --------------------------------------------------------------------------- model files


def _broken_model(run: Path, tmp: Path, name: str, how: str) -> Path:
    folder = _copy_run(run, tmp / f"m_{name}_{how}")
    path = folder / name
    if how == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not a zip file")
    elif how == "object":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        first = next(iter(arrays), "extra")
        arrays[first] = np.array([{"a": 1}, None], dtype=object)
        np.savez(path, **arrays)
    elif how == "shape":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        for k in arrays:
            if arrays[k].ndim == 2:
                arrays[k] = arrays[k][:, :-3]
        np.savez(path, **arrays)
    return folder


@pytest.mark.parametrize(("name", "how"), [
    (name, how) for name in ("decoder.npz", "linear.npz", "preprocess.npz")
    for how in ("garbage", "object", "shape")
    if (name, how) != ("preprocess.npz", "shape")  # a 'none' model stores no per-gene arrays
])
def test_damaged_model_files_are_one_line(setup, tmp_path, name, how):
    _, data, run, ref = setup
    folder = _broken_model(run, tmp_path, name, how)
    line = _one_line(_run("impute", data, "--run", folder, "--out", tmp_path / "o.h5ad"), 1,
                     name)
    assert "rerun genepanel select" in line
    _one_line(_run("compare-landmarks", data, "--run", folder, "--reference", ref,
                   "--out", tmp_path / "c", *CMP_FAST), 1, name)


def test_model_json_damage_is_one_line(setup, tmp_path):
    _, data, run, _ = setup
    for text in (b"\xff\xfe garbage", b"[1, 2]", b'{"format": "genepanel-model"'):
        folder = _copy_run(run, tmp_path / f"m{len(text)}")
        (folder / "model.json").write_bytes(text)
        _one_line(_run("impute", data, "--run", folder, "--out", tmp_path / "o.h5ad"), 1,
                  "model.json")


# --------------------------------------------------------------------------- impute --out


def test_impute_out_is_an_existing_folder(setup, tmp_path):
    _, data, run, _ = setup
    d = tmp_path / "d.h5ad"
    d.mkdir()
    (d / "keep").write_text("k")
    for extra in ([], ["--overwrite"]):
        _one_line(_run("impute", data, "--run", run, "--out", d, *extra), 2, "is a folder")
    assert (d / "keep").read_text() == "k"


def test_impute_overwrite_replaces_only_its_own_output(setup, tmp_path):
    _, data, run, _ = setup
    other = tmp_path / "precious.h5ad"
    other.write_bytes(data.read_bytes())
    _one_line(_run("impute", data, "--run", run, "--out", other, "--overwrite"), 2,
              "not a file genepanel impute wrote")
    assert other.read_bytes() == data.read_bytes()
    out = tmp_path / "o.h5ad"
    assert _run("impute", data, "--run", run, "--out", out, "-q").exit_code == 0
    _one_line(_run("impute", data, "--run", run, "--out", out), 2, "already exists")
    r = _run("impute", data, "--run", run, "--out", out, "--overwrite", "-q")
    assert r.exit_code == 0, r.output


def test_impute_csc_hint_names_no_flag_impute_lacks(setup, tmp_path):
    _, data, run, _ = setup
    a = ad.read_h5ad(data)
    a.X = sp.csc_matrix(a.X)
    csc = tmp_path / "csc.h5ad"
    a.write_h5ad(csc)
    line = _one_line(_run("impute", csc, "--run", run, "--out", tmp_path / "o.h5ad"), 1,
                     "csc_matrix", "tocsr()")
    assert "run without --stream" not in line


# --------------------------------------------------------------------------- input files


def test_npz_with_object_arrays_is_one_line(tmp_path):
    x, genes, _, _ = planted(n=100)
    path = tmp_path / "obj.npz"
    np.savez(path, X=x, feature_names=np.array(genes, dtype=object))
    for command, extra in (("select", FAST), ("benchmark", ["-q", "--methods", "random"])):
        _one_line(_run(command, path, "--k", 3, "--out", tmp_path / "o", *extra), 1,
                  "object array", "dtype=str")


def test_non_utf8_gene_lists_are_one_line(setup, tmp_path):
    _, data, run, _ = setup
    bad = tmp_path / "genes.txt"
    bad.write_bytes(b"gene001\n\xe9\xff\xfe\n")
    for opt in ("--include", "--exclude", "--candidates"):
        _one_line(_run("select", data, "--k", 3, "--out", tmp_path / "o", opt, f"@{bad}", *FAST),
                  1, "not UTF-8", str(bad))
    _one_line(_run("compare-landmarks", data, "--run", run, "--reference", bad,
                   "--out", tmp_path / "c", *CMP_FAST), 1, "not UTF-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"k: 3\n# \xff\n")
    _one_line(_run("select", data, "--config", cfg, "--out", tmp_path / "o", *FAST), 2,
              "not UTF-8")


def test_gene_list_with_a_bom_finds_its_first_gene(setup, tmp_path):
    _, data, _, _ = setup
    genes = list(ad.read_h5ad(data).var_names)
    lst = tmp_path / "inc.txt"
    lst.write_text(f"{genes[0]}\n", encoding="utf-8-sig")
    out = tmp_path / "o"
    r = _run("select", data, "--k", 3, "--out", out, "--include", f"@{lst}", *FAST)
    assert r.exit_code == 0, r.output
    assert genes[0] in (out / "panel.tsv").read_text()
    from genepanel.landmarks import read_gene_list

    assert read_gene_list(lst) == [genes[0]]


def test_integer_counts_without_log1p_get_a_hint(tmp_path):
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.poisson(5, size=(120, 30)).astype(np.float32) * rng.integers(1, 20, 30))
    a.var_names = [f"g{i}" for i in range(30)]
    path = tmp_path / "counts.h5ad"
    a.write_h5ad(path)
    r = _run("select", path, "--k", 3, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 0, r.output
    assert "looks like raw counts" in r.stderr and "--preprocess log1p" in r.stderr
    r = _run("select", path, "--k", 3, "--out", tmp_path / "p", "--preprocess", "log1p", *FAST)
    assert r.exit_code == 0 and "raw counts" not in r.stderr


# --------------------------------------------------------------------------- signals


def test_sigterm_during_the_baseline_phase_exits_143_with_a_line(setup, tmp_path, monkeypatch):
    _, data, _, _ = setup

    def killed(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr("genepanel.api.baseline_panels", killed)
    args = [a for a in FAST if a != "--no-baselines"]
    r = _run("select", data, "--k", 3, "--out", tmp_path / "o", *args)
    _one_line(r, 143, "terminated (SIGTERM)")
    assert not (tmp_path / "o").exists()
    assert signal.getsignal(signal.SIGTERM) is not None


# --------------------------------------------------------------------------- help, stdout


def test_help_shows_defaults_without_bool_labels():
    import re

    for command in ("select", "impute", "compare-landmarks", "benchmark"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0
        assert "<bool>" not in r.output, command
        text = re.sub(r"[│\s]+", " ", r.output)
        if command in ("select", "impute", "benchmark"):
            assert ".npz" in text, command
    r = runner.invoke(app, ["select", "--help"], env={"COLUMNS": "200"})
    text = re.sub(r"[│\s]+", " ", r.output)
    assert "the paper" not in text
    for shown in ("(default: 50)", "(default: 0.01)", "(default: 20000)", "(default: 25)",
                  "(default: 10)", "(default: none)", "(default: linear)"):
        assert shown in text, shown


def test_stdout_holds_the_result_path_only(setup, tmp_path):
    _, data, run, ref = setup
    out = tmp_path / "o"
    r = _run("select", data, "--k", 3, "--out", out, *[a for a in FAST if a != "-q"])
    assert r.exit_code == 0 and r.stdout == f"{out}\n"
    assert "panel of 3 genes written" in r.stderr
    r = _run("impute", data, "--run", run, "--out", tmp_path / "i.h5ad")
    assert r.exit_code == 0 and r.stdout == f"{tmp_path / 'i.h5ad'}\n"
    r = _run("compare-landmarks", data, "--run", run, "--reference", ref,
             "--out", tmp_path / "c", *CMP_FAST)
    assert r.exit_code == 0 and r.stdout == f"{tmp_path / 'c'}\n"
    r = _run("benchmark", data, "--k", 3, "--out", tmp_path / "b", "--methods", "random,pca")
    assert r.exit_code == 0 and r.stdout == f"{tmp_path / 'b'}\n"
    assert "| method" in r.stderr or "random" in r.stderr


def test_impute_reads_npz(setup, tmp_path):
    _, data, run, _ = setup
    a = ad.read_h5ad(data)
    path = tmp_path / "m.npz"
    np.savez(path, X=np.asarray(a.X), feature_names=np.asarray(a.var_names, dtype=str))
    r = _run("impute", path, "--run", run, "--out", tmp_path / "o.h5ad", "-q")
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "o.h5ad") as f:
        assert f["X"].shape == a.shape


# --------------------------------------------------------------------------- README's Errors


def _inputs(tmp: Path, data: Path) -> dict[str, Path]:
    """Broken inputs named in the README's Errors section."""
    a = ad.read_h5ad(data)
    files = {"missing": tmp / "none.h5ad", "folder": tmp / "dir.h5ad",
             "not_hdf5": tmp / "text.h5ad", "nan": tmp / "nan.h5ad", "dups": tmp / "dups.h5ad",
             "empty_name": tmp / "empty.h5ad", "bad_npz": tmp / "bad.npz"}
    files["folder"].mkdir()
    files["not_hdf5"].write_text("gene\tvalue\n")
    b = a.copy()
    b.X[3, 4] = np.nan
    b.write_h5ad(files["nan"])
    c = a.copy()
    c.var_names = ["g"] * 2 + list(a.var_names[2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.write_h5ad(files["dups"])
    e = a.copy()
    e.var["name"] = ["", *a.var_names[1:]]
    e.write_h5ad(files["empty_name"])
    files["bad_npz"].write_bytes(b"not a zip")
    return files


README_DATA_ERRORS = [
    ("missing", "not found"), ("folder", "is a folder"), ("not_hdf5", "cannot read"),
    ("nan", "NaN or infinite"), ("dups", "duplicate gene name"),
    ("empty_name", "empty gene name"), ("bad_npz", "cannot read"),
]


def test_readme_errors_bad_data_every_command(setup, tmp_path):
    _, data, run, ref = setup
    files = _inputs(tmp_path, data)
    for key, pattern in README_DATA_ERRORS:
        path = files[key]
        extra = ["--gene-column", "name"] if key == "empty_name" else []
        for args in (
            ["select", path, "--k", 3, "--out", tmp_path / "o", *FAST, *extra],
            ["benchmark", path, "--k", 3, "--out", tmp_path / "o", "-q", "--methods",
             "random", *extra],
            ["impute", path, "--run", run, "--out", tmp_path / "o.h5ad", *extra],
        ):
            _one_line(_run(*args), 1, pattern)
        if key in ("missing", "folder", "not_hdf5", "nan"):
            _one_line(_run("compare-landmarks", path, "--run", run, "--reference", ref,
                           "--out", tmp_path / "c", *CMP_FAST), 1, pattern)
    assert not any(p.name in ("o", "o.h5ad", "c") for p in tmp_path.iterdir())


def test_readme_errors_bad_options_every_command(setup, tmp_path):
    _, data, run, ref = setup
    out = tmp_path / "o"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 3\n")
    tag = tmp_path / "t.yaml"
    tag.write_text("k: !!python/object/apply:os.system ['echo hi']\n")
    cases = [
        (["select", data, "--k", 0, "--out", out], 2, "--k must be"),
        (["select", data, "--k", 500, "--out", out], 2, "smaller than the number"),
        (["select", data, "--k", 3, "--batch-size", 0, "--out", out], 2, "--batch-size"),
        (["select", data, "--k", 3, "--config", cfg, "--out", out], 2, "unknown config key"),
        (["select", data, "--k", 3, "--config", tag, "--out", out], 2, "config file"),
        (["select", data, "--k", 3, "--labels", "nope", "--out", out], 1, "nope"),
        (["select", data, "--k", 3, "--layer", "x", "--out", out], 1, "no layer 'x'"),
        (["select", data, "--k", 3, "--out", out, "--resume"], 2, "no interrupted run"),
        (["benchmark", data, "--k", 3, "--methods", "magic", "--out", out], 2, "magic"),
        (["benchmark", data, "--k", 3, "--n-random", 0, "--out", out], 2, "--n-random"),
        (["benchmark", data, "--k", 500, "--out", out], 2, "smaller than the number"),
        (["impute", data, "--run", run, "--out", tmp_path / "o.txt"], 2, "must end in .h5ad"),
        (["impute", data, "--run", run, "--out", data], 2, "is the input"),
        (["impute", data, "--run", tmp_path / "nope", "--out", tmp_path / "o.h5ad"], 1,
         "model folder"),
        (["impute", data, "--run", run, "--out", tmp_path / "o.h5ad", "--fitted-decoder", "cubic"],
         2, "--fitted-decoder"),
        (["compare-landmarks", data, "--run", tmp_path / "nope", "--out", out], 1,
         "model folder"),
        (["compare-landmarks", data, "--run", run, "--reference", ref, "--out", out,
          "--trials", 0], 2, "--trials"),
        (["compare-landmarks", data, "--run", run, "--out", out], 1, "L1000 landmarks"),
    ]
    for args, code, pattern in cases:
        _one_line(_run(*args), code, pattern)
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    # missing panel genes: listed, nothing written
    a = ad.read_h5ad(data)
    panel = json.loads((run / "model.json").read_text())["panel_genes"]
    a[:, [g for g in a.var_names if g != panel[0]]].copy().write_h5ad(tmp_path / "m.h5ad")
    _one_line(_run("impute", tmp_path / "m.h5ad", "--run", run, "--out",
                   tmp_path / "o.h5ad"), 1, "missing", panel[0])
    # data lacking the run's genes
    _one_line(_run("compare-landmarks", tmp_path / "m.h5ad", "--run", run, "--reference",
                   ref, "--out", out, *CMP_FAST), 1, "lacks 1 of the 50 genes")
