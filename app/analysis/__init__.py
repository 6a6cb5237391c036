"""Post-call analysis: a summary, the caller's intent, whether their need was met, and the fields
ANALYSIS_FILE defines, worked out once per call after it ends (`worker`), by the model or by rules."""
