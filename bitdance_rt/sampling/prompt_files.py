"""Prompt files of text-to-image sampling runs, read into ``PromptEntry`` lists (the user supplies the files; none
ship with bitdance-rt).

- ``geneval``: GenEval's ``evaluation_metadata.jsonl``: one JSON object a line with a ``"prompt"`` string (and the
  ``tag``/``include``/... fields the evaluator reads back from each prompt's ``metadata.jsonl``). Prompt p is the
  p-th non-blank line.
- ``dpg``: DPG-Bench's prompts: a JSON object ``{item_id: prompt}`` (as the BitDance release ships
  ``eval/dpg_bench/prompts.json``) or a folder of ``<item_id>.txt`` files, one prompt each (as DPG-Bench ships
  ``dpg_bench/prompts/``). The evaluator finds a prompt's image by its item id.
- ``plain``: a UTF-8 text file of one prompt a line; blank lines are skipped.

Errors name the file and the line (``errors.InputFileError``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputFileError
from .input_lines import numbered_lines, read_input_bytes

PROMPT_LAYOUTS = ("geneval", "dpg", "plain")
_SAFE_ITEM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class PromptEntry:
    key: str              # the prompt's name in the output: its ordinal (geneval, plain) or DPG item id
    prompt: str
    line: int | None      # where it came from (None: a file of a DPG prompts folder)
    source: str           # the file it came from
    metadata: str | None  # geneval: the line as read, written back as the prompt's metadata.jsonl


def infer_layout(path: Path) -> str:
    """``.jsonl`` -> geneval, ``.json`` or a folder -> dpg, anything else -> plain."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".json":
        return "dpg"
    return "geneval" if path.suffix.lower() == ".jsonl" else "plain"


def prompts_digest(entries: list[PromptEntry]) -> str:
    """sha256 of the keys and prompts (and GenEval metadata): what a rerun must match."""
    data = json.dumps([[e.key, e.prompt, e.metadata] for e in entries], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def read_prompts(path: Path, layout: str) -> list[PromptEntry]:
    path = Path(path)
    if layout not in PROMPT_LAYOUTS:
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"--layout {layout!r} is unknown; choose {', '.join(PROMPT_LAYOUTS)}.",
                                  param="layout")
    if layout == "dpg" and path.is_dir():
        entries = _read_dpg_folder(path)
    else:
        reader = {"geneval": _read_geneval, "dpg": _read_dpg_json, "plain": _read_plain}[layout]
        entries = reader(path)
    if not entries:
        raise InputFileError(path, None, f"holds no prompts (read as the {layout} format).", param="prompts")
    return entries


def _check_prompt(path: Path, line: int | None, prompt, what: str) -> str:
    if not isinstance(prompt, str):
        raise InputFileError(path, line, f"{what} is {type(prompt).__name__}, not a string.", param="prompts")
    if not prompt.strip():
        raise InputFileError(path, line, f"{what} is empty.", param="prompts")
    return prompt


def _read_geneval(path: Path) -> list[PromptEntry]:
    entries = []
    data = read_input_bytes(path, "GenEval metadata file (evaluation_metadata.jsonl)")
    for number, text in numbered_lines(path, data):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputFileError(path, number, f"is not JSON ({e.msg}, column {e.colno}); GenEval's metadata file "
                                               "has one JSON object a line, each with a \"prompt\" string.",
                                 param="prompts") from None
        if not isinstance(record, dict) or "prompt" not in record:
            raise InputFileError(path, number, "has no \"prompt\" field; GenEval's metadata file has one JSON "
                                               "object a line, each with a \"prompt\" string.", param="prompts")
        prompt = _check_prompt(path, number, record["prompt"], "the \"prompt\" field")
        entries.append(PromptEntry(str(len(entries)), prompt, number, str(path), text.strip()))
    return entries


def _line_of(text: str, needle: str) -> int | None:
    at = text.find(needle)
    return None if at < 0 else text.count("\n", 0, at) + 1


def _check_item_id(path: Path, line: int | None, key: str) -> str:
    if not _SAFE_ITEM_ID.fullmatch(key) or key in (".", ".."):
        raise InputFileError(path, line, f"item id {key!r} cannot name an image file; DPG-Bench item ids are "
                                         "letters, digits, '_', '-' and '.'.", param="prompts")
    return key


def _read_dpg_json(path: Path) -> list[PromptEntry]:
    data = read_input_bytes(path, "DPG-Bench prompts (a JSON object {item_id: prompt}, or a folder of .txt files)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        for _ in numbered_lines(path, data):  # raises, naming the line
            pass
        raise
    duplicates: list[str] = []

    def pairs(items):
        seen = {}
        for k, v in items:
            if k in seen:
                duplicates.append(k)
            seen[k] = v
        return seen

    try:
        table = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise InputFileError(path, e.lineno, f"is not JSON ({e.msg}, column {e.colno}); DPG-Bench prompts are one "
                                             "JSON object {\"item_id\": \"prompt\", ...}.", param="prompts") from None
    if not isinstance(table, dict):
        raise InputFileError(path, 1, f"holds a JSON {type(table).__name__}; DPG-Bench prompts are one JSON object "
                                      "{\"item_id\": \"prompt\", ...}.", param="prompts")
    if duplicates:
        key = duplicates[0]
        raise InputFileError(path, _line_of(text, json.dumps(key)), f"item id {key!r} appears twice.",
                             param="prompts")
    entries = []
    for key, prompt in table.items():
        line = _line_of(text, json.dumps(key, ensure_ascii=False))
        _check_item_id(path, line, key)
        entries.append(PromptEntry(key, _check_prompt(path, line, prompt, f"the prompt of {key!r}"), line,
                                   str(path), None))
    return entries


def _item_order(name: str):
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def _read_dpg_folder(folder: Path) -> list[PromptEntry]:
    files = sorted((p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file()),
                   key=lambda p: _item_order(p.stem))
    if not files:
        raise InputFileError(folder, None, "holds no .txt files; a DPG-Bench prompts folder has one "
                                           "<item_id>.txt file a prompt.", param="prompts")
    entries = []
    for f in files:
        _check_item_id(f, None, f.stem)
        lines = [text for _, text in numbered_lines(f, read_input_bytes(f, "prompt file"))]
        prompt = _check_prompt(f, None, "\n".join(lines).strip(), "its prompt")
        entries.append(PromptEntry(f.stem, prompt, None, str(f), None))
    return entries


def _read_plain(path: Path) -> list[PromptEntry]:
    entries = []
    for number, text in numbered_lines(path, read_input_bytes(path, "prompts file (one prompt a line)")):
        if text.strip():
            entries.append(PromptEntry(str(len(entries)), text.strip(), number, str(path), None))
    return entries
