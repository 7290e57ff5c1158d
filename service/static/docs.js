// Swagger UI on this server's OpenAPI document; "try it out" calls this server, and the
// bearer token entered under "Authorize" (when the server has one) is kept for the session.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,  // the token is not kept in localStorage
    tryItOutEnabled: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
