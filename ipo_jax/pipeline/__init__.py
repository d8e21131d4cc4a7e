"""Host-side pipeline: sentence steps, trigger pool, interventions, pair records, CSR analysis (the
judges and cue detectors it calls are `ipo_jax.judging`; the policy and completion reading are
`ipo_jax.rollout`)."""
