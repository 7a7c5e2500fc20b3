"""The shared kit: one place for what every Loomstack service needs."""
