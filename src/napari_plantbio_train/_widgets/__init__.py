"""Qt front ends over the engine; importing anything here imports Qt, so the engine never imports it."""
