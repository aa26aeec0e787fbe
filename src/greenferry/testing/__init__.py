"""Fakes and helpers shipped with the package for tests of greenferry and of code built on it."""
