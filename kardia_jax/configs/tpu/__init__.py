"""Run configs sized for named TPU slices (docs/tpu.md): each fits its slice by the
TPU compiler's own figures, with at least 10% of HBM to spare."""
