"""The single controller: data in, worker groups called in dataflow order, metrics out."""
