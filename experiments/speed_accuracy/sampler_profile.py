"""Where does a DPPO policy query spend its time? torch.profiler over `dppo.sample` (train mode, the bundled Hopper
policy, K' fine-tuned steps) on one batch of --rows observations, one thread: each op's share of the time, and the
GFLOP/s of the matmuls against a bare torch.mm of the same shapes.

    OMP_NUM_THREADS=1 python experiments/speed_accuracy/sampler_profile.py --rows 40
"""

import argparse
import time

import torch

from cleandppo import dppo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="observations per query (--num-envs)")
    parser.add_argument("--ft-denoising-steps", type=int, default=10)
    parser.add_argument("--queries", type=int, default=20, help="timed queries")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = torch.load("cleandppo/pretrained/hopper-v2-diffusion-mlp.pt", weights_only=False, map_location="cpu")
    actor, actor_ft, _ = dppo.build_actors(ckpt, args.ft_denoising_steps, torch.device("cpu"))
    kw = ckpt["model_kwargs"]
    sched = dppo.make_schedule(kw["denoising_steps"])
    plan = dppo.denoising_plan(kw["denoising_steps"], None)
    run_args = dppo.Args(env_id="Hopper-v2")
    obs = torch.randn(args.rows, kw["cond_steps"], kw["obs_dim"], generator=torch.Generator().manual_seed(0))

    def query():
        dppo.sample(actor, actor_ft, sched, obs, plan, args.ft_denoising_steps, "train", run_args)

    with torch.no_grad():
        for _ in range(3):
            query()
        t0 = time.perf_counter()
        for _ in range(args.queries):
            query()
        seconds = (time.perf_counter() - t0) / args.queries
        with torch.profiler.profile() as prof:  # the shares, from queries of their own (the profiler slows them)
            for _ in range(args.queries):
                query()
    # the matmuls of one query: each denoising step runs one network (frozen or fine-tuned, the same shapes): its
    # nn.Linear layers, 2 in*out FLOP per row
    linears = [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]
    flop = 2 * args.rows * sum(m.in_features * m.out_features for m in linears) * len(plan)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    addmm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm"))
    a = torch.randn(args.rows, max(m.in_features for m in linears))
    weights = [torch.randn(m.out_features, m.in_features) for m in linears]
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(args.queries * len(plan)):
            for w in weights:
                torch.mm(a[:, : w.shape[1]], w.t())
        mm_seconds = (time.perf_counter() - t0) / args.queries
    print(f"dppo.sample: {args.rows} rows, {len(plan)} denoising steps, {1e3 * seconds:.1f} ms per query")
    print(f"matmul share of the profiled time: {addmm / total:.2f}")
    print(f"GFLOP/s of the query (matmul FLOPs / its time): {flop / seconds / 1e9:.1f}")
    print(f"GFLOP/s of bare torch.mm at the same shapes: {flop / mm_seconds / 1e9:.1f}")
    print(f"the query's rate / bare matmul rate: {mm_seconds / seconds:.2f}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
