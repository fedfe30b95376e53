"""Engine runners: execute the relational stages (Ibis expressions) on an embedded or distributed backend."""
