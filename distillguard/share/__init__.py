"""Share: detected campaigns -> keyed STIX 2.1 bundles / TAXII 2.1; peers ' bundles -> the indicator store."""
