"""Shared runner of the estproto fuzz harnesses: atheris when installed, a plain loop otherwise.

Each harness (``fuzz_codecs.py``, ``fuzz_server.py``, ``fuzz_client.py``)
defines named *targets*: functions taking one input (bytes) that must return
normally or raise one of the exceptions the target declares (the typed
protocol errors of h11's fuzz invariant: ``DecodeError`` for decoders,
``RemoteProtocolError`` for header parsers and the client connection;
nothing at all for the server connection, whose peer faults never raise).
Anything else escaping is a finding.

Two engines run the same targets:

* atheris (coverage-guided libFuzzer, ``pip install atheris``): seeds are
  written to a corpus directory, estproto, h11, asn1crypto and the codecs
  are instrumented, and every libFuzzer flag (``-max_total_time=``,
  ``-runs=``, ``-rss_limit_mb=``, ``-jobs=`` ...) passes through;
* ``--plain``: a dependency-free mutation loop over the same seeds (bit
  flips, byte insertions and deletions, truncations, splices, pure random
  bytes), for machines without atheris. It honours ``-max_total_time=`` and
  ``-runs=`` too, and saves a failing input as ``crash-<sha1>`` like
  libFuzzer does.

Bounds checked on every input, by both engines: time (:data:`TIME_LIMIT`
seconds per input, a plain wall-clock check around the call) and memory
(libFuzzer's ``-rss_limit_mb``, default :data:`RSS_LIMIT_MB` here; the plain
loop checks ``ru_maxrss`` every :data:`RSS_CHECK_EVERY` inputs).

Inputs of the ``all`` target start with one selector byte naming the target
(index modulo the number of targets), so one libFuzzer process spreads over
every target while coverage guidance keeps the interesting ones.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping, Sequence

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

#: Seconds one input may take. Every estproto input is bounded by a size
#: limit, so even the slowest path (an RSA-4096 signature check, a
#: handshake) takes milliseconds; 1 s leaves room for atheris'
#: instrumentation overhead and a loaded machine, and still catches
#: quadratic blow-ups on the 1 MiB limits.
TIME_LIMIT = 1.0

#: Default libFuzzer -rss_limit_mb (and the plain loop's bound): the
#: interpreter with cryptography, pyOpenSSL and the instrumented modules sits
#: near 150 MB; an input that pushes the process past 1 GiB is a finding.
RSS_LIMIT_MB = 1024

#: The plain loop reads ru_maxrss once every this many inputs (a syscall).
RSS_CHECK_EVERY = 256

Target = Callable[[bytes], None]


class SlowInput(AssertionError):
    """An input took longer than :data:`TIME_LIMIT` seconds."""


def timed(target: Target) -> Target:
    """Wrap *target* so that an input over :data:`TIME_LIMIT` s is a finding."""

    def run(data: bytes) -> None:
        start = time.perf_counter()
        target(data)
        elapsed = time.perf_counter() - start
        if elapsed > TIME_LIMIT:
            raise SlowInput(f"input of {len(data)} bytes took {elapsed:.2f} s")

    return run


def keep_going(target: Target) -> Target:
    """Wrap *target* so a finding is reported once per signature, not fatal.

    The signature is the exception type and the innermost frame inside
    estproto (else the innermost frame). Each new one is printed with its
    traceback and its input saved as ``finding-<sha1>``; fuzzing goes on, so
    one long run collects every distinct bug instead of stopping at the
    first.
    """
    seen: set[tuple[str, str]] = set()

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if "/estproto/" in f.filename] or frames
            where = f"{Path(ours[-1].filename).name}:{ours[-1].name}" if ours else "?"
            signature = (type(exc).__name__, where)
            if signature not in seen:
                seen.add(signature)
                path = Path.cwd() / f"finding-{hashlib.sha1(data).hexdigest()}"
                path.write_bytes(data)
                traceback.print_exc()
                print(f"==NEW FINDING== {signature[0]} at {signature[1]}: {exc!s:.200} "
                      f"(input {path})", flush=True)

    return run


def select_all(targets: Mapping[str, Target]) -> Target:
    """One target running all of them, chosen by the input's first byte."""
    names = sorted(targets)

    def run(data: bytes) -> None:
        if not data:
            return
        targets[names[data[0] % len(names)]](data[1:])

    return run


def prefixed_seeds(targets: Sequence[str], seeds: Mapping[str, list[bytes]]) -> list[bytes]:
    """Seeds of every target, each prefixed by its selector byte for ``all``."""
    names = sorted(targets)
    return [bytes([names.index(name)]) + s for name in names for s in seeds.get(name, [])]


# ---------------------------------------------------------------------------
# The plain engine


def mutate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    """One to four random edits of *data* (libFuzzer's simplest mutators)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # set a byte to an interesting value
            buf[rng.randrange(n)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x30, 0x0A, 0x0D, 0x3D))
        elif op == 2:  # insert random bytes
            i = rng.randint(0, n)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, 16)]
        elif op == 4 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 5 and n:  # duplicate a chunk
            i = rng.randrange(n)
            chunk = buf[i : i + rng.randint(1, 64)]
            j = rng.randint(0, n)
            buf[j:j] = chunk
        elif op == 6 and pool:  # splice with another seed
            other = rng.choice(pool)
            if other:
                i = rng.randint(0, n)
                j = rng.randrange(len(other))
                buf[i:] = other[j:]
        else:  # overwrite a DER length byte candidate with a big length
            if n > 2:
                i = rng.randrange(1, n)
                buf[i] = rng.choice((0x81, 0x82, 0x83, 0x84, 0x88))
    return bytes(buf)


def _save_crash(data: bytes, where: Path) -> Path:
    path = where / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def _libfuzzer_flag(argv: Sequence[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"-{name}="):
            return arg.split("=", 1)[1]
    return None


def run_plain(target: Target, seeds: Sequence[bytes], argv: Sequence[str], seed: int | None) -> int:
    """The plain mutation loop; returns the process exit status."""
    runs = int(_libfuzzer_flag(argv, "runs") or 0)
    seconds = float(_libfuzzer_flag(argv, "max_total_time") or 0)
    rss_limit = int(_libfuzzer_flag(argv, "rss_limit_mb") or RSS_LIMIT_MB)
    if runs <= 0 and seconds <= 0:
        seconds = 60.0
    rng = random.Random(seed)
    pool = [s for s in seeds if s] or [b""]
    start = time.monotonic()
    executed = 0
    # Every seed unmodified first (they must all pass), then mutants.
    queue: list[bytes] = list(seeds)
    while True:
        if runs > 0 and executed >= runs:
            break
        if seconds > 0 and time.monotonic() - start >= seconds:
            break
        if queue:
            data = queue.pop()
        elif rng.randrange(16) == 0:
            data = rng.randbytes(rng.randint(0, 512))
        else:
            data = mutate(rng, rng.choice(pool), pool)
        try:
            target(data)
        except Exception:
            traceback.print_exc()
            path = _save_crash(data, Path.cwd())
            print(f"==FINDING== after {executed} executions; input saved to {path}", flush=True)
            return 1
        executed += 1
        if executed % RSS_CHECK_EVERY == 0:
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if rss_mb > rss_limit:
                path = _save_crash(data, Path.cwd())
                print(f"==FINDING== rss {rss_mb:.0f} MB over {rss_limit} MB; last input {path}")
                return 1
        if executed % 20000 == 0:
            print(f"#{executed} {executed / (time.monotonic() - start):.0f} exec/s", flush=True)
    elapsed = time.monotonic() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Done {executed} runs in {elapsed:.0f} s ({executed / max(elapsed, 1e-9):.0f} exec/s), "
          f"peak rss {rss_mb:.0f} MB, no finding", flush=True)
    return 0


# ---------------------------------------------------------------------------
# Entry point


def main(
    description: str,
    make_targets: Callable[[], Mapping[str, Target]],
    make_seeds: Callable[[], Mapping[str, list[bytes]]],
    instrument: Sequence[str] = ("estproto", "h11", "asn1crypto"),
) -> None:
    """Parse the command line and run one target under atheris or the plain loop.

    Our own options come first (``--target``, ``--plain``, ``--seed``,
    ``--list``); everything else goes to libFuzzer (flags starting with a
    single ``-``, corpus directories).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", default="all", help="target name, or 'all' (default)")
    parser.add_argument("--plain", action="store_true", help="use the plain loop, not atheris")
    parser.add_argument("--seed", type=int, default=None, help="plain loop: random seed")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--keep-going", action="store_true",
                        help="report each distinct finding once and keep fuzzing")
    ours, rest = parser.parse_known_args()

    try:
        import atheris
    except ImportError:
        atheris = None
    use_atheris = atheris is not None and not ours.plain
    if use_atheris:
        with atheris.instrument_imports(include=list(instrument)):
            targets = make_targets()
    else:
        targets = make_targets()
    if ours.list:
        print("\n".join(["all", *sorted(targets)]))
        return
    seeds = make_seeds()
    if ours.target == "all":
        target = select_all(targets)
        seed_inputs = prefixed_seeds(list(targets), seeds)
    elif ours.target in targets:
        target = targets[ours.target]
        seed_inputs = list(seeds.get(ours.target, []))
    else:
        parser.error(f"unknown target {ours.target!r}; --list shows them")
    checked = timed(target)
    for s in seed_inputs:  # the seeds themselves must pass, under either engine
        checked(s)

    if ours.keep_going:
        checked = keep_going(checked)
    if not use_atheris:
        if atheris is None:
            print("atheris is not installed: running the plain mutation loop", flush=True)
        sys.exit(run_plain(checked, seed_inputs, rest, ours.seed))

    corpus_dirs = [a for a in rest if not a.startswith("-")]
    flags = [a for a in rest if a.startswith("-")]
    if not any(f.startswith("-rss_limit_mb=") for f in flags):
        flags.append(f"-rss_limit_mb={RSS_LIMIT_MB}")
    if not any(f.startswith("-timeout=") for f in flags):
        flags.append("-timeout=10")  # libFuzzer's own hang detector, beyond TIME_LIMIT
    if not corpus_dirs:
        corpus_dirs = [tempfile.mkdtemp(prefix=f"estproto-fuzz-{ours.target}-")]
    first = Path(corpus_dirs[0])
    first.mkdir(parents=True, exist_ok=True)
    for s in seed_inputs:
        (first / f"seed-{hashlib.sha1(s).hexdigest()}").write_bytes(s)
    atheris.Setup([sys.argv[0], *flags, *corpus_dirs], checked)
    atheris.Fuzz()
