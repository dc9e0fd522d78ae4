"""CASA's side: the channel grid, the tasks a worker runs, and the one iteration controller of a cube."""
