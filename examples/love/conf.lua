function love.conf(t)
  t.identity = "imgedit-demo"
  t.window.title = "imgedit: an edit while the game keeps drawing"
  t.window.width, t.window.height = 640, 400
  t.window.vsync = 0
  t.modules.audio, t.modules.sound, t.modules.joystick, t.modules.physics = false, false, false, false
end
