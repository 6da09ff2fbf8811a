"""The load tests behind `scripts/loadtest`: a reusable concurrent driver and its modes."""
