"""Running cells: a cell's clips and model → measurement → record, dispatched in-process, as local
processes or as Slurm jobs (DESIGN.md §5–7)."""
