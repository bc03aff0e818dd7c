"""Power iteration (jvp/vjp, J never formed) against the full Jacobian + SVD, as n grows.

The map: MiniLM's layer-0 attention sublayer (12 heads, d = 384) with its LayerNorm in front, at a
random point of the LayerNorm set (float64, one torch thread). For each n it prints the seconds and
the extra peak memory of each method (each measured in a fresh subprocess: peak RSS after the
computation minus peak RSS after loading the model), the ratio power / SVD of the two norms, and
where the full Jacobian stops fitting in the memory budget (8 (n d)^2 bytes for J alone, about three
times that with the SVD's workspace). Peak memory: the kernel's peak-RSS counter (VmHWM) is reset
through /proc/self/clear_refs after loading, so the figure is the computation's own. Prints a table;
asserts nothing.

    .venv/bin/python benchmarks/lipschitz_power_vs_svd.py [--max-n 512] [--budget-gb 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from assay.lipschitz.models import load_model
from assay.lipschitz.maps import attention_map
from assay.lipschitz.sets import TokenSet
from assay.lipschitz.jacobian import jacobian_norm
from torch.func import jacrev
method, n = sys.argv[1], int(sys.argv[2])
m = load_model("minilm")
f = attention_map(m, 0, layernorm=True)
X = TokenSet("layernorm", 384 ** 0.5, 384).random(n, torch.Generator().manual_seed(0))
f(X)
del m
import gc
gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])  # kB
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak RSS (VmHWM) to the current RSS
    fh.write("5")
base = status("VmRSS:")
t0 = time.perf_counter()
if method == "power":
    est = jacobian_norm(f, X, tol=1e-8, max_iter=500)
    value, extra = est.value, {"iterations": est.iterations, "residual": est.residual}
else:
    J = jacrev(f, chunk_size=512)(X).reshape(n * 384, n * 384)
    value, extra = float(torch.linalg.svdvals(J)[0]), {}
secs = time.perf_counter() - t0
peak = status("VmHWM:")
print(json.dumps({"value": value, "seconds": secs, "extra_mb": (peak - base) / 1024, **extra}))
"""


def measure(method: str, n: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, method, str(n)], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-n", type=int, default=512)
    ap.add_argument("--budget-gb", type=float, default=4.0, help="skip the full Jacobian above this estimate")
    args = ap.parse_args()
    d = 384
    ns = [n for n in (8, 16, 32, 64, 128, 256, 512) if n <= args.max_n]
    print(f"{'n':>5} {'power s':>9} {'iters':>6} {'residual':>9} {'power MB':>9} {'svd s':>8} {'svd MB':>8} "
          f"{'J est. GB':>9} {'power/svd':>12}")
    for n in ns:
        pw = measure("power", n)
        need_gb = 3 * 8 * (n * d) ** 2 / 1e9
        sv = measure("svd", n) if need_gb <= args.budget_gb else None
        ratio = f"{pw['value'] / sv['value']:.10f}" if sv and "value" in sv and "value" in pw else "—"
        svs = f"{sv['seconds']:8.2f} {sv['extra_mb']:8.0f}" if sv and "value" in sv else f"{'no fit':>8} {'—':>8}"
        print(f"{n:5d} {pw.get('seconds', float('nan')):9.2f} {pw.get('iterations', 0):6d} "
              f"{pw.get('residual', float('nan')):9.1e} {pw.get('extra_mb', float('nan')):9.0f} {svs} "
              f"{need_gb:9.2f} {ratio:>12}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
