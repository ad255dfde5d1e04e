"""Drift scoring: exact statistics, count windows and the streaming drift engine.

- :mod:`drift.stats`: PSI, Jensen-Shannon distance and normalised Wasserstein, computed with
  Evidently 0.7's rules so that the numbers agree with Evidently and SciPy on the same data.
- :mod:`drift.window`: a count window that closes after ``window_size`` records.
- :mod:`drift.scoring`: one closed window scored against a reference, feature by feature.
- :mod:`drift.sketch`: sketch mode's bounded, mergeable summaries (numeric and categorical),
  and the budget choosing exact or sketch mode per stream.
- :mod:`drift.sketch_scoring`: drift scored from sketches, with an error bound against exact
  mode.
- :mod:`drift.record_types`: the record types scored (llm, tools, paths, predictions, gpu),
  their topics, and how a record becomes feature rows (``inputs.age``: one per instance).
- :mod:`drift.engine`: :class:`~drift.engine.DriftEngine`, the consuming stage that reads
  the record topics with features configured and writes ``observer.drift``.
- :mod:`drift.metrics`: the Prometheus metrics the engine exports.
- :mod:`drift.reports`: Evidently HTML reports, one per drift episode (admin
  ``/reports/{id}``, ``observer drift score --report-dir``).
"""
