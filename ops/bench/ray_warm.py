# Not run by CI: the peer side of `troupe bench --only warm` (docs/benchmarks.md).
# python3 -m venv v && v/bin/pip install ray==2.60.0 && v/bin/python ops/bench/ray_warm.py 200 1
# Ray's side of the 200-item warm workload: an ActorPool of 2 actors whose __init__ sleeps 1.0 s
# (the model load) and whose method scores a batch of 8 items at 5 ms of busy CPU each; timed
# from creating the actors to every output in the driver (ray.init() not counted).
import sys, time
import ray
from ray.util.actor_pool import ActorPool

@ray.remote(num_cpus=1)
class Scorer:
    def __init__(self):
        time.sleep(1.0)
    def score(self, batch):
        out = []
        for x in batch:
            end = time.perf_counter() + 0.005
            while time.perf_counter() < end:
                pass
            out.append(x)
        return out

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
for run in range(int(sys.argv[2]) if len(sys.argv) > 2 else 4):
    t = time.perf_counter()
    pool = ActorPool([Scorer.remote() for _ in range(2)])
    batches = [list(range(i, min(i + 8, N))) for i in range(0, N, 8)]
    res = [x for b in pool.map(lambda a, v: a.score.remote(v), batches) for x in b]
    assert len(res) == N
    print("run %d: %.3f s" % (run, time.perf_counter() - t), flush=True)
    for a in pool._idle_actors:
        ray.kill(a)
    time.sleep(1.0)
