"""The search of one key: the loop that asks a study, measures in the harness and stores; the
final re-measurement; the strategies (plug-ins); and the offline replay on recorded sweeps."""
