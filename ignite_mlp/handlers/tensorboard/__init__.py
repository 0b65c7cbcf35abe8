"""What a run shows in TensorBoard (``logger``), the images it draws (``images``) and the event
files underneath (``events``)."""
