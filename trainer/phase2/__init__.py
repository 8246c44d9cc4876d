"""LLM-XTM phase 2: refinement prompts and parsing, refiner backends, the MMD and document-alignment objective."""
