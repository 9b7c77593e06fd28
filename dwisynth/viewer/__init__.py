"""`dwisynth view`: open a study in the browser, synthesize any b-value beside the acquisition, inspect, export."""
