"""GPU check of the embed pipeline end to end: CLI on cuda in fp32/fp16/bf16 vs CPU fp32; resume after SIGKILL.

Run from the repository root on a machine with a CUDA GPU, with the converted EfficientNet-Lite0 weights
at .gpu/tf_efficientnet_lite0.safetensors (`stitchcli demo` writes them to $STITCHCLI_CACHE/assets/weights):

    OUT=/tmp/out python benchmarks/gpu_check.py

Writes $OUT/gpu_check.json. Note: the cache key does not hold the device, so the cuda fp32 run is a
cache hit on the CPU fp32 entry (its "cos" is then CPU against CPU); fp16 and bf16 are new entries.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, "tests")
from conftest import make_image_folder
from safetensors.numpy import load_file

out = Path(os.environ.get("OUT", "/tmp/out"))
out.mkdir(parents=True, exist_ok=True)
root = Path("/tmp/gpucheck")
data = make_image_folder(root / "img", per_class={"train": 200, "test": 40}, size=64)
env = {**os.environ, "STITCHCLI_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
report = {}

def run(*args):
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "stitchcli", "embed", *args, "-d", str(data), "--json", "-q"], env=env, capture_output=True, text=True)
    if r.returncode:
        return {"rc": r.returncode, "stderr": r.stderr[-2000:]}
    e = json.loads(r.stdout)["entries"]
    return {"rc": 0, "wall_s": round(time.time() - t, 2), "entries": [{k: x[k] for k in ("split", "rows", "dim", "rows_per_s", "cache_hit", "path")} for x in e]}

def emb(res, split="train"):
    return load_file([x for x in res["entries"] if x["split"] == split][0]["path"])["embeddings"]

def cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True); b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean()), float((a * b).sum(1).min())

for model, extra in (("lite0", ["-m", "timm:tf_efficientnet_lite0", "--weights", ".gpu/tf_efficientnet_lite0.safetensors"]),
                     ("test_vit", ["-m", "test_vit", "--weights", "random"])):
    cpu = run(*extra, "--device", "cpu", "--batch-size", "64")
    report[f"{model}_cpu"] = cpu
    for prec in ("fp32", "fp16", "bf16"):
        g = run(*extra, "--device", "auto", "--precision", prec, "--batch-size", "128")
        report[f"{model}_cuda_{prec}"] = g
        if g["rc"] == 0 and cpu["rc"] == 0:
            g["cos_vs_cpu_fp32_mean_min"] = cos(emb(g), emb(cpu))
    hit = run(*extra, "--device", "auto", "--precision", "fp32", "--batch-size", "128")
    report[f"{model}_second_run_cache_hit"] = hit.get("entries", hit) and all(x["cache_hit"] for x in hit.get("entries", []))

# resume after SIGKILL on the GPU
args = [sys.executable, "-m", "stitchcli", "embed", "-m", "timm:tf_efficientnet_lite0", "--weights", ".gpu/tf_efficientnet_lite0.safetensors",
        "-d", str(data), "--split", "train", "--device", "cuda", "--batch-size", "8", "--shard-rows", "16", "--num-workers", "0", "--json", "-q"]
kenv = {**env, "STITCHCLI_CACHE": str(root / "kill-cache")}
p = subprocess.Popen(args, env=kenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
while p.poll() is None and len(list((root / "kill-cache").glob("embeddings/*/*/*.partial/shard-*"))) < 3:
    time.sleep(0.005)
os.kill(p.pid, signal.SIGKILL); p.wait()
shards = len(list((root / "kill-cache").glob("embeddings/*/*/*.partial/shard-*")))
r = subprocess.run(args, env=kenv, capture_output=True, text=True)
e = json.loads(r.stdout)["entries"][0]
ref = run("-m", "timm:tf_efficientnet_lite0", "--weights", ".gpu/tf_efficientnet_lite0.safetensors", "--split", "train", "--device", "cuda", "--batch-size", "8", "--shard-rows", "16", "--num-workers", "0", "--force")
diff = float(np.abs(load_file(e["path"])["embeddings"] - emb(ref)).max())
report["gpu_resume"] = {"shards_at_kill": shards, "resumed_rows": e["resumed_rows"], "rows": e["rows"], "max_abs_diff_vs_uninterrupted": diff}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
