"""The simulated learner: a task family with known ground truth and a backend that answers
like a model whose success depends on the notes in its prompt (issue "Prove that it learns").

    crps-agent sim tasks --n 24 --out train.jsonl            # its tasks (JSONL with reference)
    crps-agent learn train.jsonl --backend sim               # learn against the simulator

Modules: `config` (SimConfig, the `[sim]` table), `world` (problem types, pitfall catalogue,
task generator), `backend` (SimBackend, registered as backend `sim`), `generate` (task files),
`truth` (ground truth: only the simulator and the benchmark may import it, a test checks).
This package imports nothing heavy: `crps_agent.config` imports `crps_agent.sim.config`.
"""
