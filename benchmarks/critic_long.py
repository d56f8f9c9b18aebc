"""Longer critic runs (issue 11): does held-out accuracy keep rising past 500 steps? Reads the weak seed-0 policies
of a critic_rerank run in /tmp/i11/cr (edit the paths); usage: python benchmarks/critic_long.py STEPS LR"""
import json, sys, time
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
from benchmarks.critic_rerank import train_critic

STEPS, LR = int(sys.argv[1]), float(sys.argv[2])
runs = {("arithmetic", "weak"): "/tmp/i11/cr/arithmetic/seed0/mle_weak/checkpoint.pt",
        ("oracle-hmm", "weak"): "/tmp/i11/cr/oracle-hmm/seed0/mle_weak/checkpoint.pt"}
kw = dict(noise_pool=0, init_from_policy=False, eval_every=100, eval_size=512, patience=0)
with ProcessPoolExecutor(2) as pool:
    fs = {k: pool.submit(train_critic, k[0], 0, ckpt, f"/tmp/i11/cl/{k[0]}_{k[1]}", STEPS, 64, LR, kw)
          for k, ckpt in runs.items()}
    res = {"/".join(k): f.result() for k, f in fs.items()}
json.dump({"steps": STEPS, "lr": LR, "batch": "64 + 64", "nce": kw, "results": res},
          open("/tmp/i11/critic_long.json", "w"), indent=1)
for k, v in res.items():
    print(k, v["critic_accuracy"], v["critic_auc"], v["wall_s"], [(c["step"], round(c["critic_accuracy"], 3)) for c in v["curve"]])
