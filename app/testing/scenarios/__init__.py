"""Call scenarios: what callers say and what must happen, checked on whole calls through the local
stand-ins (`python -m app test-calls`, `make test-calls`).

- `files`: the YAML format, read with the file and line of every mistake;
- `noise`: speech-recognition noise on the caller's lines (`--asr-noise`, `--seed`);
- `runner`: one switchboard per run, a scenario placed as a call, and what the records say of it;
- `checks`: the expectations against what happened; `judge`: those a model scores;
- `suite`: a run, N calls at a time; `report`: text, JSON and JUnit XML; `cli`: the command.
"""
