"""NaN forensics: the failing step of a training saved to `nan_forensics/` and replayed to name its op.

`capture.write_forensics` writes the folder (NaNGuard calls it when it fires
with `forensics=True`); `replay.replay` replays a step on a live model,
`replay.replay_folder` from a saved folder, and `replay.replay_main` is the
`ptycho-callbacks replay RUN_DIR` command.
"""
