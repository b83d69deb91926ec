"""HTTP handlers: parse, call one domain function, write."""
