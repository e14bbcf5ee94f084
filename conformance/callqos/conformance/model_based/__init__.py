"""The model-based checker: random operation histories generated from a seed (make at every level and
service type, renegotiate with NO_CHANGE per direction, drop, link capacity changes, restarts of a
server the suite owns, concurrent bursts), run against the target and judged after every step by an
oracle derived from the contract, the advertised capabilities and the accounting rules of SPEC.md. The
first failing history is shrunk to a minimal one and reported as a runnable reproduction.

- `ops`: the operations, as data (what a history is, how it is printed);
- `world`: what the target advertises and the link the histories run on;
- `oracle`: what must hold — admissibility, what a grant or a refusal must be (pure functions);
- `generate`: histories from a seed;
- `execute`: a history run against the target, step by step, judged by the oracle;
- `shrink`: delta debugging of a failing history;
- `repro`: the reproduction, as `callqos` CLI commands;
- `budget`: how long it may run.
"""
