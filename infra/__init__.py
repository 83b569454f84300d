"""Throwaway services for tests, benches and local tries (not part of the product)."""
