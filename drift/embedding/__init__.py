"""Drift of embedding features (prompt and response vectors): batch methods scored per
window (:mod:`.methods`), the streaming detector calibrated to an expected run time
(:mod:`.online_mmd`), and the evidence a drifted window carries (:mod:`.evidence`)."""
