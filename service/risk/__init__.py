"""Fraud risk: rules over each decision, the versioned policy, and the fraud-engine callbacks."""
