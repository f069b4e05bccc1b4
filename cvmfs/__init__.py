"""cvmfs package."""
