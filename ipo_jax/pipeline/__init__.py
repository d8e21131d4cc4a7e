"""Host-side pipeline: sentence steps, judges and cue detectors, trigger pool, interventions, pair records,
CSR analysis."""
