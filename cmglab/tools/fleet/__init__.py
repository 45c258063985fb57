"""Fleet mode: many simulated devices driven through the client agent's own components, in-process."""
