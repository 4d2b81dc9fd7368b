"""xray_jax: pediatric chest X-ray pneumonia classification in JAX."""
