"""Detectors on a SYNTHETIC video stream and label-free run-time choice among them (ROMA, papers.md §7):
`stream` (the stream), `metrics` (AP@0.5), `detector` (the TinyDet family), `profile` (ROMA's offline
tables), `realtime` (real-time scoring), `roma` (ROMA, TOD, comparison with fixed detectors and an oracle)."""
