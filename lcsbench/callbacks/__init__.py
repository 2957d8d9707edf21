"""Lightning callbacks: decide when an analysis runs and log its figures and scalars."""
