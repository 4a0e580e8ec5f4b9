"""Seeded random bad-input sweep of the raw C++ ops (torch.ops.fastseg.*, CPU), each case judged as

  error   - a clean Python exception: the op refused the input,
  ok      - a result equal to the PyTorch reference under the NaN rule of fastseg.ops (equal_nan),
  crash   - the process died (signal, sanitizer report, abort),
  silent  - a result although the reference refuses the input, or a result that differs from it.

Cases run in a worker subprocess that reports each outcome before the next case; when the worker dies,
the case it was running is a crash and a new worker continues with the next one.

    python .ci/fuzz_ops.py --cases 300 --seed 0          # prints the counts and every non-clean case
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys

# (meta tensors are not bad input for a raw op: its Meta kernel computes the output shape, as for tracing)
MUTATIONS = ("valid", "zero_dim", "wrong_size", "rank", "dtype", "noncontiguous", "nonfinite", "int_arg")
BIG = (-1, 0, 2**31, 2**62)


def _tensors(op: str, rng: random.Random):
    """Valid arguments of ``op`` (CPU, random sizes): a dict of tensors and a dict of other arguments."""
    import torch

    b, c, h, w = rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 6), rng.randint(1, 6)
    if op == "deform_conv2d":
        kh, kw = rng.randint(1, 3), rng.randint(1, 3)
        pad = rng.randint(0, 1)
        ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
        if ho <= 0 or wo <= 0:
            pad, ho, wo, kh, kw = 1, h, w, 3, 3
        taps = kh * kw
        return ({"input": torch.randn(b, c, h, w), "offset": 2 * torch.randn(b, 2 * taps, ho, wo),
                 "weight": torch.randn(3, c, kh, kw), "mask": torch.rand(b, taps, ho, wo), "bias": torch.randn(3)},
                {"stride": [1, 1], "padding": [pad, pad], "dilation": [1, 1]})
    if op == "flow_warp":
        return ({"input": torch.randn(b, c, h, w), "flow": 3 * torch.randn(b, 2, rng.randint(1, 6), rng.randint(1, 6))},
                {"padding_mode": rng.choice(["zeros", "border"]), "align_corners": rng.random() < 0.5})
    if op == "lovasz_hinge":
        n, p = rng.randint(1, 3), rng.randint(1, 40)
        return ({"logits": torch.randn(n, p), "labels": torch.rand(n, p) > 0.5, "valid": torch.rand(n, p) > 0.2}, {})
    if op == "class_avg_pool":
        k = rng.randint(1, 5)
        return ({"features": torch.randn(b, c, h, w), "labels": torch.randint(0, k, (b, h, w))},
                {"num_classes": k, "ignore_index": rng.choice([255, -1, 0])})
    if op == "gaussian_center_distance":
        k = rng.randint(1, 5)
        return ({"embeddings": torch.randn(b, c, h, w), "centers": torch.randn(b, k, c), "margins": 0.1 * torch.randn(b, k)},
                {"delta": 10.0})
    k = rng.randint(1, 5)  # soft_class_pool
    return ({"features": torch.randn(b, c, h, w), "probs": torch.rand(b, k, h, w).softmax(1)}, {})


def _mutate(tensors: dict, others: dict, mutation: str, rng: random.Random) -> str:
    """Apply one mutation in place; returns what was done."""
    import torch

    name = rng.choice(sorted(tensors))
    t = tensors[name]
    if mutation == "zero_dim":
        dim = rng.randrange(t.dim())
        tensors[name] = t.narrow(dim, 0, 0)
    elif mutation == "wrong_size":
        dim = rng.randrange(t.dim())
        shape = list(t.shape)
        shape[dim] += rng.choice([-1, 1, 3]) if shape[dim] > 1 else rng.choice([1, 3])
        tensors[name] = torch.zeros(shape, dtype=t.dtype).bernoulli_(0.5) if t.dtype == torch.bool else \
            torch.randn(shape).to(t.dtype) if t.is_floating_point() else torch.randint(0, 2, shape).to(t.dtype)
    elif mutation == "rank":
        tensors[name] = t.unsqueeze(0) if rng.random() < 0.5 or t.dim() == 1 else t.flatten(0, 1)
    elif mutation == "dtype":
        tensors[name] = t.to(rng.choice([torch.float64, torch.float16, torch.int64, torch.bool, torch.int32]))
    elif mutation == "noncontiguous":
        tensors[name] = t.transpose(0, -1).contiguous().transpose(0, -1) if t.dim() > 1 else t.repeat(2)[::2]
    elif mutation == "nonfinite" and t.is_floating_point() and t.numel():
        flat = t.clone().view(-1)
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
        if rng.random() < 0.5:
            flat[0] = float("inf")
        tensors[name] = flat.view(t.shape)
    elif mutation == "int_arg" and others:
        key = rng.choice(sorted(others))
        value = others[key]
        if isinstance(value, list):
            value = list(value)
            value[rng.randrange(2)] = rng.choice(BIG)
        elif isinstance(value, bool):
            value = not value
        elif isinstance(value, str):
            value = rng.choice(["reflection", "", "Zeros"])
        elif isinstance(value, float):
            value = rng.choice([float("nan"), float("inf"), -1e30])
        else:
            value = rng.choice(BIG)
        others[key] = value
        return f"{key}={value!r}"
    else:
        return "valid"
    return f"{mutation} {name} -> {tuple(tensors[name].shape)} {tensors[name].dtype} {tensors[name].device}"


def _raw_and_reference(op: str, tensors: dict, others: dict):
    """(raw C++ op result, callable computing the reference result) of one case."""
    import torch
    from fastseg.ops.class_avg_pool import class_avg_pool_reference
    from fastseg.ops.deform_conv2d import deform_conv2d_reference
    from fastseg.ops.flow_warp import flow_warp_reference
    from fastseg.ops.gaussian_center_distance import gaussian_center_distance_reference
    from fastseg.ops.lovasz_hinge import lovasz_hinge_reference
    from fastseg.ops.soft_class_pool import soft_class_pool_reference

    raw = torch.ops.fastseg
    t, o = tensors, others
    if op == "deform_conv2d":
        return (raw.deform_conv2d(t["input"], t["offset"], t["weight"], t["mask"], t["bias"], o["stride"], o["padding"],
                                  o["dilation"]),
                lambda: deform_conv2d_reference(t["input"], t["offset"], t["weight"], t["bias"], o["stride"],
                                                o["padding"], o["dilation"], t["mask"]))
    if op == "flow_warp":
        return (raw.flow_warp(t["input"], t["flow"], o["padding_mode"], o["align_corners"]),
                lambda: flow_warp_reference(t["input"], t["flow"], o["padding_mode"], o["align_corners"]))
    if op == "lovasz_hinge":
        return (raw.lovasz_hinge(t["logits"], t["labels"], t["valid"])[0],
                lambda: lovasz_hinge_reference(t["logits"], t["labels"], t["valid"]))
    if op == "class_avg_pool":
        return (raw.class_avg_pool(t["features"], t["labels"], o["num_classes"], o["ignore_index"]),
                lambda: class_avg_pool_reference(t["features"], t["labels"], o["num_classes"], o["ignore_index"]))
    if op == "gaussian_center_distance":
        return (raw.gaussian_center_distance(t["embeddings"], t["centers"], t["margins"], o["delta"]),
                lambda: gaussian_center_distance_reference(t["embeddings"], t["centers"], t["margins"], o["delta"]))
    return (raw.soft_class_pool(t["features"], t["probs"])[0], lambda: soft_class_pool_reference(t["features"], t["probs"]))


def _raw_backward(op: str, t: dict, o: dict, saved):
    """Call the raw backward op of ``op`` on the (mutated) inputs with a random incoming gradient shaped like the
    valid case's outputs ``saved``; its result is not judged, only whether it crashes."""
    import torch

    raw = torch.ops.fastseg
    if op == "deform_conv2d":
        return raw.deform_conv2d_backward(torch.randn_like(saved), t["input"], t["offset"], t["weight"], t["mask"],
                                          o["stride"], o["padding"], o["dilation"])
    if op == "flow_warp":
        return raw.flow_warp_backward(torch.randn_like(saved), t["input"], t["flow"], o["padding_mode"],
                                      o["align_corners"])
    if op == "lovasz_hinge":
        _, weights = saved
        return raw.lovasz_hinge_backward(torch.randn(weights.shape[0]), weights)
    if op == "class_avg_pool":
        centers, counts = saved
        return raw.class_avg_pool_backward(torch.randn_like(centers), t["labels"], counts, o["ignore_index"])
    if op == "gaussian_center_distance":
        return raw.gaussian_center_distance_backward(torch.randn_like(saved), t["embeddings"], t["centers"],
                                                     t["margins"], o["delta"])
    centers, mass = saved
    return raw.soft_class_pool_backward(torch.randn_like(centers), t["features"], t["probs"], centers, mass)


def _valid_outputs(op: str, tensors: dict, others: dict):
    """The raw forward outputs of the unmutated case, saved for the backward call."""
    import torch

    raw, t, o = torch.ops.fastseg, tensors, others
    if op == "deform_conv2d":
        return raw.deform_conv2d(t["input"], t["offset"], t["weight"], t["mask"], t["bias"], o["stride"],
                                 o["padding"], o["dilation"])
    if op == "flow_warp":
        return raw.flow_warp(t["input"], t["flow"], o["padding_mode"], o["align_corners"])
    if op == "lovasz_hinge":
        return raw.lovasz_hinge(t["logits"], t["labels"], t["valid"])
    if op == "class_avg_pool":
        return raw.class_avg_pool(t["features"], t["labels"], o["num_classes"], o["ignore_index"])
    if op == "gaussian_center_distance":
        return raw.gaussian_center_distance(t["embeddings"], t["centers"], t["margins"], o["delta"])
    return raw.soft_class_pool(t["features"], t["probs"])


def _same(actual, expected) -> bool:
    import torch

    if isinstance(actual, (tuple, list)):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected))
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if actual.is_floating_point():
        return torch.allclose(actual.double(), expected.double(), rtol=1e-3, atol=1e-3, equal_nan=True)
    return torch.equal(actual, expected)


def run_case(index: int, seed: int) -> tuple[str, str]:
    """(outcome, description) of case ``index``; may crash the process."""
    import torch
    import fastseg.ops.extension  # noqa: F401  (loads fastseg._C: registers the raw ops)

    rng = random.Random(f"{seed}-{index}")
    torch.manual_seed(rng.randrange(2**31))
    op = rng.choice(["deform_conv2d", "flow_warp", "lovasz_hinge", "class_avg_pool", "gaussian_center_distance",
                     "soft_class_pool"])
    tensors, others = _tensors(op, rng)
    saved = _valid_outputs(op, tensors, others)
    what = f"{op}: " + _mutate(tensors, others, rng.choice(MUTATIONS), rng)
    print(json.dumps({"index": index, "started": what}), flush=True)  # named in the report if the process dies
    try:
        _raw_backward(op, tensors, others, saved)
    except Exception:  # noqa: BLE001  (refusing is fine; only a crash counts here)
        pass
    try:
        actual, reference = _raw_and_reference(op, tensors, others)
    except Exception as error:  # noqa: BLE001  (any Python exception is a clean refusal)
        return "error", f"{what}: {type(error).__name__}"
    try:
        expected = reference()
    except Exception as error:  # noqa: BLE001
        return "silent", f"{what}: returned although the reference raised {type(error).__name__}: {str(error)[:80]}"
    if not _same(actual, expected):
        return "silent", f"{what}: differs from the reference"
    return "ok", f"{what}: equals the reference"


def worker(start: int, stop: int, seed: int) -> None:
    for index in range(start, stop):
        outcome, what = run_case(index, seed)
        print(json.dumps({"index": index, "outcome": outcome, "what": what}), flush=True)


def sweep(cases: int, seed: int) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    index = 0
    while index < cases:
        process = subprocess.run([sys.executable, __file__, "--worker", str(index), str(cases), "--seed", str(seed)],
                                 capture_output=True, text=True)
        running = None
        for line in process.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "started" in record:
                running = (record["index"], record["started"])
                continue
            counts[record["outcome"]] += 1
            if record["outcome"] == "silent":
                print(f"SILENT case {record['index']}: {record['what']}")
            running, index = None, record["index"] + 1
        if running is not None:  # the worker died during this case
            tail = (process.stderr.strip().splitlines() or ["(no output)"])
            report = next((line for line in tail if "ERROR: AddressSanitizer" in line or "runtime error" in line),
                          tail[-1])
            print(f"CRASH case {running[0]}: {running[1]} (exit {process.returncode}): {report[:200]}")
            counts["crash"] += 1
            index = running[0] + 1
        elif process.returncode != 0:  # died after its last case (e.g. a report at exit)
            print(f"worker exited {process.returncode} after case {index - 1}: {process.stderr[-300:]}")
            counts["crash"] += 1
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, type=int, metavar=("START", "STOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.seed)
        return 0
    counts = sweep(args.cases, args.seed)
    summary = {key: counts.get(key, 0) for key in ("error", "ok", "crash", "silent")}
    print(f"fuzz sweep, {args.cases} cases, seed {args.seed}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 1 if summary["crash"] or summary["silent"] else 0


if __name__ == "__main__":
    sys.exit(main())
