"""The contextual route: fitting the head that maps sentence embeddings to theta."""
