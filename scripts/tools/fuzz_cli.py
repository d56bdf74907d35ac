"""Fuzz campaign over the ``vqnet`` command line itself, as a hostile user drives it (run by
``scripts/tools/fuzz_campaign.py --cli``; too long for the test suite, whose hypothesis tests run the
same classes of input a few hundred times).

Each case is one command through the real app (typer's CliRunner, in this process), on inputs
generated from ``(seed, i)`` alone:

- ``args``: random option names and values for every command (parsing and validation);
- ``image``: an image file of a random mode, bit depth, size or damage, through ``vqnet encode``;
- ``vqn``: a real ``.vqn`` file of the default codec, mutated by the receive-path campaign's
  mutators, through ``vqnet decode``;
- ``scenario``: a scenario with a hostile field (names that leave ``--out``, odd types, traces
  that are devices or numbers, duplicate-stem image folders), through ``vqnet scenario check`` or
  ``vqnet run``;
- ``journal``: the journal of a real interrupted sweep, damaged (bytes flipped, lines cut, fused,
  repeated, dropped, values edited), then resumed with ``vqnet run``: the finished results.csv
  must be byte-identical to an uninterrupted run's.

A case passes when the command ends in a result (exit 0) or in one ``Error:`` line with exit 2;
anything else (a traceback, another exit code, a second line, a case over ``--max-seconds``, a
changed result) is a failure, printed with the case number to reproduce it
(``--first i --n 1``). The default codec is loaded once for the whole campaign (it is not what
is fuzzed). Exit status 1 on any failure.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from typer.testing import CliRunner

import vqnet.codec.bundle
from vqnet.cli import app
from vqnet.journal import PARTIAL_NAME
from vqnet.vqn import encode_vqn, write_vqn

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_campaign import MUTATORS  # noqa: E402  (the receive-path campaign's .vqn mutators)

COMMANDS = {
    "encode": ["--K", "--max-payload", "--layout", "--chroma-cells", "-o", "--model"],
    "decode": ["--method", "-o", "--model"],
    "eval": ["--ks", "--layout", "--codebooks", "--classical", "--max-payload", "--chroma-cells", "--out"],
    "run": ["--out", "--model", "--fresh", "--wait", "-q"],
    "channel stats": ["--model", "--loss", "--burst", "--packets", "--seed", "--p", "--r", "--json"],
    "score": ["--json"],
    "scenario check": [],
}
VALUES = [
    "0",
    "-1",
    "1",
    "256",
    "99999999999999999999",
    "nan",
    "inf",
    "1e309",
    "a,b",
    "256,",
    ",",
    "",
    " ",
    "raster",
    "zigzag",
    "both",
    "none",
    "jpeg,webp",
    "gilbert",
    "ar",
    "/dev/null",
    "/dev/zero",
    ".",
    "..",
    "/",
    "x.png",
    "out.vqn",
    "0.5",
    "1.0",
    "-0.0",
    "\x00",
    "é",
    "--help",
]


#: What a command may print on stderr besides its Error line (progress notes, not errors).
_NOTES = ("vqnet: fetching", "note: ", "waiting for ")


class CaseTimeout(Exception):
    """A case ran past --max-seconds."""


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


class Campaign:
    def __init__(self, root: Path, seed: int, max_seconds: float):
        self.root, self.seed, self.max_seconds = root, seed, max_seconds
        self.runner = CliRunner()
        img = np.array(Image.open(_photo()).convert("RGB").resize((96, 64)))
        Image.fromarray(img).save(root / "photo.png")
        codec = vqnet.codec.bundle.load_codec(None)
        self.vqns = [
            write_vqn(encode_vqn(codec, img, K, payload, layout, cells))
            for K, payload, layout, cells in ((256, 24, "interleaved", 2), (64, 1000, "raster", 0))
        ]
        self.scenario = (
            "name: fz\nseed: 3\nimages: {source: %s}\nK: [256]\nchannel: {model: gilbert, loss: [0.2, 0.6], "
            "burst: [3]}\nmethods: [none, neighbor]\ntrials: 3\nexamples: {losses: [0.6]}\n"
        )
        (root / "fz.yaml").write_text(self.scenario % (root / "photo.png"))
        clean = self.invoke(["run", str(root / "fz.yaml"), "--out", str(root / "clean"), "-q"])
        assert clean.exit_code == 0, clean.output
        self.expected = (root / "clean" / "fz" / "results.csv").read_bytes()
        self.journal = self._complete_journal()

    def _complete_journal(self) -> bytes:
        """Every line a sweep journals (it deletes the file once its tables are written): a run
        whose results.csv cannot be written (a folder stands where its temporary file goes) stops
        with one Error line and keeps the journal."""
        folder = self.root / "jrun"
        (folder / "fz" / "results.tmp").mkdir(parents=True)
        res = self.invoke(["run", str(self.root / "fz.yaml"), "--out", str(folder), "-q"])
        assert res.exit_code == 2, res.output
        return (folder / "fz" / PARTIAL_NAME).read_bytes()

    def invoke(self, argv: list[str]):
        return self.runner.invoke(app, argv)

    # --- cases: each returns (kind, argv, check) where check(result) may raise AssertionError ---

    def case(self, i: int) -> tuple[str, list[str], Callable[[object], None] | None]:
        r = random.Random((self.seed << 40) | i)
        work = self.root / f"case{i}"
        work.mkdir()
        kind = r.choices(["args", "image", "vqn", "scenario", "journal"], weights=[40, 25, 15, 15, 5])[0]
        return kind, *getattr(self, f"_{kind}")(r, work)

    def _args(self, r: random.Random, work: Path):
        command = r.choice(list(COMMANDS))
        argv = command.split() + [str(self.root / "photo.png")] * r.randint(0, 2)
        for _ in range(r.randint(0, 4)):
            argv.append(r.choice(COMMANDS[command] + ["--bogus", "-x"]))
            if r.random() < 0.8:
                value = r.choice(VALUES)
                argv.append(str(work / value) if value in ("x.png", "out.vqn") else value)
        return argv, None

    def _image(self, r: random.Random, work: Path):
        h, w = r.choice([(1, 1), (20, 64), (30, 31), (31, 31), (64, 48), (48, 200)])
        ramp = np.linspace(0, 1, h * w).reshape(h, w)
        form = r.choice(
            [
                "u16",
                "float",
                "float>1",
                "int32",
                "bool",
                "la",
                "p",
                "cmyk",
                "rgba",
                "random",
                "truncated",
                "huge-header",
                "float-rgb",
            ]
        )
        path = work / ("img.tif" if form in ("float", "float>1", "int32", "float-rgb") else "img.png")
        if form in ("float", "float>1", "int32", "float-rgb"):
            arr = {
                "float": ramp.astype(np.float32),
                "float>1": (ramp * 300).astype(np.float32),
                "int32": (ramp * 1e6).astype(np.int32),
                "float-rgb": np.dstack([ramp] * 3).astype(np.float32),
            }[form]
            tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else None)
        elif form == "random":
            path.write_bytes(r.randbytes(r.randint(0, 400)))
        elif form in ("truncated", "huge-header"):
            Image.open(self.root / "photo.png").save(path)
            data = bytearray(path.read_bytes())
            if form == "truncated":
                data = data[: r.randrange(8, len(data))]
            else:
                data[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")
            path.write_bytes(bytes(data))
        else:
            grey = np.round(ramp * 255).astype(np.uint8)
            im = {
                "u16": lambda: Image.fromarray(np.round(ramp * 65535).astype(np.uint16)),
                "bool": lambda: Image.fromarray(grey > 127),
                "la": lambda: Image.fromarray(np.dstack([grey, grey]), "LA"),
                "p": lambda: Image.fromarray(grey).convert("P"),
                "cmyk": lambda: Image.fromarray(grey).convert("CMYK"),
                "rgba": lambda: Image.fromarray(np.dstack([grey] * 4), "RGBA"),
            }[form]()
            path = path.with_suffix(".jpg") if form == "cmyk" else path
            im.save(path)
        return ["encode", str(path), "-o", str(work / "out.vqn")], None

    def _vqn(self, r: random.Random, work: Path):
        mutator = r.choice(list(MUTATORS))
        data = MUTATORS[mutator](r, list(self.vqns))
        (work / "in.vqn").write_bytes(data)
        return [
            "decode",
            str(work / "in.vqn"),
            "-o",
            str(work / "out.png"),
            "--method",
            r.choice(["none", "neighbor"]),
        ], None

    def _scenario(self, r: random.Random, work: Path):
        dup = work / "dup"
        for rel in ("a/x.png", "b/x.png", "x.jpg"):
            (dup / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(self.root / "photo.png").save(dup / rel)
        field = r.choice(
            [
                "name: ..",
                "name: .",
                "name: ../../x",
                "name: 5",
                "name: [a]",
                "seed: -1",
                "seed: 1e30",
                "K: [3]",
                "K: 256",
                "trials: 0",
                "images: {source: /dev/zero}",
                f"images: {{source: {dup}}}",
                "channel: {model: trace, params: {path: 5}}",
                "channel: {model: trace, params: {path: /dev/zero}}",
                "channel: {model: gilbert, loss: [0.99], burst: [1]}",
                "methods: []",
                "link: {jitter_s: 1}",
                "examples: {image: nope}",
                "name: a\nname: b",
                "[",
                "{}",
                "null",
                "name: ok\nextra: 1",
            ]
        )
        (work / "s.yaml").write_text(f"name: s\nmethods: [none]\ntrials: 1\n{field}\n")
        argv = (
            ["scenario", "check", str(work / "s.yaml")]
            if r.random() < 0.5
            else ["run", str(work / "s.yaml"), "--out", str(work / "out"), "-q"]
        )

        def stays_inside(res: object) -> None:
            outside = [p for p in work.iterdir() if p.name not in ("s.yaml", "out", "dup")]
            assert not outside, f"wrote outside --out: {outside}"

        return argv, stays_inside

    def _journal(self, r: random.Random, work: Path):
        lines = self.journal.splitlines(keepends=True)
        op = r.choice(["flip", "cut", "fuse", "repeat", "drop", "edit", "garbage"])
        if op == "flip":
            data = bytearray(self.journal)
            for _ in range(r.randint(1, 6)):
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
            data = bytes(data)
        elif op == "cut":
            data = self.journal[: r.randrange(len(self.journal))]
        elif op == "fuse":
            i = r.randrange(1, len(lines) - 1)
            lines[i] = lines[i][: r.randrange(len(lines[i]))] + lines[i + 1]
            data = b"".join(lines)
        elif op == "repeat":
            data = b"".join(lines + r.sample(lines[1:], r.randint(1, len(lines) - 1)))
        elif op == "drop":
            data = b"".join(line for j, line in enumerate(lines) if j == 0 or r.random() < 0.5)
        elif op == "edit":  # a value changed by hand, checksum left as it was
            i = r.randrange(1, len(lines))
            data = b"".join(lines[:i] + [lines[i].replace(b'"lpips": 0.', b'"lpips": 1.', 1)] + lines[i + 1 :])
        else:
            data = self.journal + r.randbytes(r.randint(1, 200)) + b"\n"
        (work / "fz").mkdir()
        (work / "fz" / PARTIAL_NAME).write_bytes(data)

        def same_result(res: object) -> None:
            if res.exit_code == 0:
                assert (work / "fz" / "results.csv").read_bytes() == self.expected, f"{op}: results.csv changed"

        return ["run", str(self.root / "fz.yaml"), "--out", str(work), "-q"], same_result


@functools.cache
def _photo() -> Path:
    import skimage.data

    path = Path(tempfile.mkdtemp()) / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    return path


def run(n: int, first: int, seed: int, max_seconds: float) -> int:
    vqnet.codec.bundle.load_codec = functools.cache(vqnet.codec.bundle.load_codec)  # load the codec once
    signal.signal(signal.SIGALRM, _on_alarm)
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="vqnet-fuzz-cli-") as tmp:
        os.chdir(tmp)  # commands given no output path write to their defaults, under here
        t_start = time.perf_counter()
        campaign = Campaign(Path(tmp), seed, max_seconds)
        outcomes: Counter[str] = Counter()
        failures: list[str] = []
        for i in range(first, first + n):
            kind, argv, check = campaign.case(i)
            signal.setitimer(signal.ITIMER_REAL, max_seconds)
            try:
                res = campaign.invoke(argv)
                signal.setitimer(signal.ITIMER_REAL, 0)
                if res.exception is not None and not isinstance(res.exception, SystemExit):
                    raise AssertionError(
                        f"{type(res.exception).__name__}: {res.exception}\n"
                        + "".join(traceback.format_exception(res.exception))
                    )
                if res.exit_code == 2:
                    errors = [ln for ln in res.stderr.splitlines() if not ln.startswith(_NOTES)]
                    assert len(errors) == 1 and errors[0].startswith("Error: "), f"not one Error line: {res.output!r}"
                else:
                    assert res.exit_code == 0, f"exit {res.exit_code}: {res.output[-500:]!r}"
                if check:
                    check(res)
                outcomes[f"{kind}: {'ok' if res.exit_code == 0 else 'one Error line'}"] += 1
            except (AssertionError, CaseTimeout) as exc:
                signal.setitimer(signal.ITIMER_REAL, 0)
                what = "over --max-seconds" if isinstance(exc, CaseTimeout) else str(exc)
                outcomes[f"{kind}: FAILED"] += 1
                failures.append(f"case {i} ({kind}) {argv!r}: {what}")
        seconds = time.perf_counter() - t_start
        os.chdir(home)
    print(f"{n} CLI cases (seed {seed}, first {first}) in {seconds:.0f} s:")
    for key, count in sorted(outcomes.items()):
        print(f"  {key:<30} {count}")
    for line in failures[:20]:
        print(line, file=sys.stderr)
    if failures:
        print(
            f"FAIL: {len(failures)} cases crashed, hung, printed more than one error line or changed a result",
            file=sys.stderr,
        )
        return 1
    print("OK: every case ended in a result or one Error: line (exit 2); no resumed sweep changed results.csv")
    return 0
