"""Evaluation, torch-free: the papers' metrics (TU, CNPMI, TQ, classification), published numbers,
and the run report (report.html)."""
