"""Streamed liveness: a session over a kiosk's frames that tracks one face, asks a random
challenge, and combines passive, motion, blink and challenge checks into one `LivenessReport`.

`session_policy` holds the thresholds and limits, `challenge` the prompts and how a response is
judged, `verdicts` the per-check verdicts and their combination, `session` the pure state
machine over per-frame observations, and `stream` the runner that feeds it decoded frames and
ends with the engine's `Decision`. Nothing here knows about gRPC.
"""
