"""The output folder's own files: ``run.json`` (the run's settings, the values the model's defaults filled in, and
one entry per invocation), ``.tmp/`` (temporary names of files being written) and ``.status/`` (the ranks' status
board). A rerun into a folder resumes only when its settings equal the recorded ones; otherwise it is refused,
naming each difference. A folder that holds other files and no ``run.json`` is not a sampling folder and is
refused too, so a mistyped ``--out`` never writes into a folder of one's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic_files import write_text
from .errors import SamplingError

RUN_FILE = "run.json"
TMP_DIR = ".tmp"
STATUS_DIR = ".status"
RECORD_FORMAT = 1


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` (and its temporary folder) and prove it writable; refuse a folder that is not a sampling
    folder. Rank 0 only, before any model loads."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SamplingError(f"--out {out} is a file; pass a folder (it is created when missing).")
    if out.is_dir():
        foreign = sorted(set(os.listdir(out)) - {RUN_FILE, TMP_DIR, STATUS_DIR})
        if foreign and not (out / RUN_FILE).exists():
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise SamplingError(f"--out {out} is not empty ({shown}) and has no {RUN_FILE}, so it is not a sampling "
                                "folder; choose a new or empty folder.")
    try:
        (out / TMP_DIR).mkdir(parents=True, exist_ok=True)
        (out / STATUS_DIR).mkdir(exist_ok=True)
        probe = out / TMP_DIR / f"write-probe.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise SamplingError(f"cannot write to the output folder {out} ({type(e).__name__}: {e.strerror or e}); "
                            "choose a folder you can write to with --out.") from None


def clear_temporaries(out: Path) -> None:
    """Leftovers of a killed run: files being written when it died (never renamed into place)."""
    for entry in os.scandir(Path(out) / TMP_DIR):
        if entry.is_file():
            Path(entry.path).unlink(missing_ok=True)


def remove_run_state(out: Path) -> None:
    """After a finished run: the temporary folder and the status board go, leaving the evaluator's files and
    ``run.json`` (a rerun recreates them)."""
    import shutil

    for name in (TMP_DIR, STATUS_DIR):
        shutil.rmtree(Path(out) / name, ignore_errors=True)


def file_fingerprint(path: str | Path | None) -> dict | None:
    """Name and sizes of a model file or folder: what must not change between a run and its rerun (reading
    gigabytes of weights to hash them is not worth it; a changed download changes a size)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        files = {f.relative_to(p).as_posix(): f.stat().st_size for f in sorted(p.rglob("*"))
                 if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)}
        return {"name": p.resolve().name, "files": files}
    return {"name": p.resolve().name, "bytes": p.stat().st_size}


def load_record(out: Path) -> dict | None:
    path = Path(out) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SamplingError(f"{path} is not valid JSON ({e}); it is not this tool's record. Move it away to start "
                            "this folder over, or choose another --out.") from None
    if not isinstance(record, dict) or "settings" not in record or record.get("format") != RECORD_FORMAT:
        raise SamplingError(f"{path} is not a run record of bitdance-rt sample (format {RECORD_FORMAT}); choose "
                            "another --out.")
    return record


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """``name: recorded -> current`` for every setting that differs (nested dicts by dotted name)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {_short(a)} recorded, {_short(b)} now")
    return out


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_same_settings(record: dict, settings: dict, out: Path) -> None:
    diff = differences(record["settings"], settings)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SamplingError(f"{Path(out) / RUN_FILE} was written by a run with other settings ({shown}). A folder "
                            "resumes only the run that started it: rerun with the recorded settings, or choose "
                            "another --out.")


def write_record(out: Path, record: dict) -> None:
    write_text(Path(out) / RUN_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n", Path(out) / TMP_DIR)
