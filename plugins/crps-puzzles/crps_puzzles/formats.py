"""Native task-file formats: `game24` (the 4nums.com CSV) and `countdown` (JSON Lines).

`game24` reads `../shared/data/game24/24.csv` (`Rank,Puzzles,AMT (s),Solved rate,...`, as
published with Tree of Thoughts): one task per row, id `game24-<rank>`, reference = the four
numbers, meta = rank, solve rate and mean human time. `countdown` reads JSON Lines
`{numbers | nums, target, use_all?, id?}`. Errors name the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crps_agent.errors import TaskFileError
from crps_agent.plugins import TaskFormat
from crps_agent.tasks import read_jsonl
from crps_puzzles.domains import parse_numbers


def game24_prompt(numbers: list[int]) -> str:
    return f"Make 24 from the numbers {' '.join(map(str, numbers))}."


def countdown_prompt(numbers: list[int], target: int, use_all: bool) -> str:
    rule = "each exactly once" if use_all else "each at most once"
    return f"Reach {target} from the numbers {' '.join(map(str, numbers))} ({rule})."


def read_game24(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is accepted
    except UnicodeDecodeError as exc:
        raise TaskFileError(str(path), data.count(b"\n", 0, exc.start) + 1, None,
                            f"not UTF-8 (byte 0x{data[exc.start]:02x}); re-encode the file "
                            "as UTF-8") from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "Puzzles" not in reader.fieldnames:
            raise TaskFileError(str(path), 1, "Puzzles", "missing column (expected the "
                                "header Rank,Puzzles,AMT (s),Solved rate,...)")
        for row in reader:
            lineno = reader.line_num
            puzzle = (row.get("Puzzles") or "").strip()
            numbers = parse_numbers(puzzle)
            if len(numbers) != 4 or not all(1 <= n <= 99 for n in numbers) \
                    or len(puzzle.split()) != 4:
                raise TaskFileError(str(path), lineno, "Puzzles",
                                    f"expected four positive integers, got {puzzle!r}")
            rank = (row.get("Rank") or "").strip() or str(lineno - 1)
            meta: dict[str, Any] = {"source": "game24", "rank": rank, "numbers": numbers}
            if row.get("Solved rate"):
                meta["solved_rate"] = row["Solved rate"].strip()
            if row.get("AMT (s)"):
                meta["amt_s"] = row["AMT (s)"].strip()
            yield lineno, {"prompt": game24_prompt(numbers),
                           "reference": " ".join(map(str, numbers)),
                           "id": f"game24-{rank}", "meta": meta}


def read_countdown(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, obj in read_jsonl(path):
        field = "numbers" if "numbers" in obj else "nums"
        numbers = obj.get(field)
        if not isinstance(numbers, list) or not numbers or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise TaskFileError(str(path), lineno, field, "expected a list of integers")
        target = obj.get("target")
        if not isinstance(target, int) or isinstance(target, bool):
            raise TaskFileError(str(path), lineno, "target", "expected an integer")
        use_all = bool(obj.get("use_all", False))
        rec: dict[str, Any] = {
            "prompt": countdown_prompt(numbers, target, use_all),
            "reference": f"{' '.join(map(str, numbers))} -> {target}",
            "meta": {"source": "countdown", "use_all": use_all},
        }
        if obj.get("id") is not None:
            rec["id"] = str(obj["id"])
        yield lineno, rec


FORMATS = [
    TaskFormat(name="game24", domain="game24", read=read_game24,
               description="Game of 24 CSV (4nums.com, as in Tree of Thoughts): "
                           "Rank,Puzzles,...; reference = the four numbers"),
    TaskFormat(name="countdown", domain="countdown", read=read_countdown,
               description="Countdown JSONL {numbers, target, use_all?, id?}; "
                           "reference = 'NUMBERS -> TARGET'"),
]
