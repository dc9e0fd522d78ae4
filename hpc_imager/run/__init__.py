"""The driver's side: the loop over chunks, the journal, the cube's assembly, status and the report."""
